//! `admin-gui`: the desktop admin app for the broker's operators.
//!
//! The file list is the architecture: [`client`] is the network worker (off the UI thread),
//! [`state`] the model it feeds, [`app`] the frame loop, [`panels`] one file per panel,
//! [`api`] the admin API's JSON, [`settings`] what is remembered between runs.

pub mod api;
pub mod app;
pub mod client;
pub mod format;
pub mod panels;
pub mod settings;
pub mod state;

pub use app::{AdminApp, Options};
