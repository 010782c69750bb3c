//! `admin-gui`: the desktop admin app for the broker's operators.
//!
//! The file list is the architecture: [`client`] is the network worker (off the UI thread),
//! [`state`] the model it feeds, [`app`] the frame loop, [`panels`] one file per panel,
//! [`settings`] what is remembered between runs. The admin API's types are the `admin_api`
//! crate, shared with the broker's routes.

pub mod app;
pub mod client;
pub mod format;
pub mod panels;
pub mod settings;
pub mod state;

pub use app::{AdminApp, Options};
