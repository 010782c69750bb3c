//! `admin-gui`: the desktop admin app for the broker's operators.
//!
//! The file list is the architecture: [`client`] is the network side (off the UI thread; one
//! file per concept: worker, session, stream, sync, fleet, http, messages), [`state`] the model
//! it feeds (connections, instances, charts, activity), [`app`] the frame loop, [`panels`] one
//! file per panel, [`settings`] what is remembered between runs. The admin API's types are the `admin_api`
//! crate, shared with the broker's routes.

pub mod app;
pub mod client;
pub mod format;
pub mod panels;
pub mod secrets;
pub mod settings;
pub mod state;

pub use app::{AdminApp, Options};
