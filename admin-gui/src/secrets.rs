//! Where the admin token is kept between runs: the system keyring, never the settings file.
//!
//! On Linux that is the desktop's Secret Service (GNOME Keyring, KWallet, KeePassXC) over
//! D-Bus, reached with the `keyring` crate's pure-Rust backend (zbus: no system library to
//! build against); on macOS the Keychain, on Windows the Credential Manager. Where there is
//! none (no D-Bus session, no Secret Service, another OS), nothing is stored and the app says
//! "token not saved: no keyring": the token must be entered again at the next start. The token
//! is never written to the JSON settings.
//!
//! Entries are per ops URL: service `broker-admin-gui`, user the URL.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// The keyring service name of the app's entries.
pub const SERVICE: &str = "broker-admin-gui";

/// Why a token could not be read or kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretError {
    /// There is no keyring to use here (the words say why).
    NoKeyring(String),
    /// The keyring is there but refused or failed.
    Failed(String),
}

impl std::fmt::Display for SecretError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretError::NoKeyring(why) => write!(f, "no keyring: {why}"),
            SecretError::Failed(why) => write!(f, "the keyring failed: {why}"),
        }
    }
}

/// A place for tokens.
#[derive(Clone, Debug, Default)]
pub enum Secrets {
    /// The system keyring.
    System,
    /// In this process only (tests, and a keyring stand-in for them).
    Memory(Arc<Mutex<HashMap<String, String>>>),
    /// Nowhere: every save says there is no keyring.
    #[default]
    None,
}

impl Secrets {
    /// The system keyring where this build has one, else [`Secrets::None`].
    pub fn system() -> Secrets {
        if cfg!(any(
            target_os = "linux",
            target_os = "macos",
            target_os = "windows"
        )) {
            Secrets::System
        } else {
            Secrets::None
        }
    }

    pub fn memory() -> Secrets {
        Secrets::Memory(Arc::default())
    }

    /// The token kept for `url`, if any.
    pub fn get(&self, url: &str) -> Result<Option<String>, SecretError> {
        match self {
            Secrets::System => system::get(url),
            Secrets::Memory(m) => Ok(m.lock().ok().and_then(|m| m.get(url).cloned())),
            Secrets::None => Err(no_keyring()),
        }
    }

    /// Keeps `token` for `url` (an empty token deletes the entry).
    pub fn set(&self, url: &str, token: &str) -> Result<(), SecretError> {
        match self {
            Secrets::System => system::set(url, token),
            Secrets::Memory(m) => {
                let mut m = m
                    .lock()
                    .map_err(|_| SecretError::Failed("poisoned".into()))?;
                if token.is_empty() {
                    m.remove(url);
                } else {
                    m.insert(url.to_string(), token.to_string());
                }
                Ok(())
            }
            Secrets::None => Err(no_keyring()),
        }
    }
}

/// Where the token in the connection bar is kept, for the few words next to it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum TokenNote {
    /// Nothing to say (no token yet).
    #[default]
    Nothing,
    /// Given on the command line or in the environment: not stored.
    FromCommandLine,
    /// Read from, or saved to, the keyring.
    InKeyring,
    /// Being saved.
    Saving,
    /// Read from the settings file, where an older version wrote it in plain JSON.
    PlainJson,
    /// Not kept: no keyring, or the keyring failed.
    NotSaved(SecretError),
}

impl TokenNote {
    /// The words next to the token field.
    pub fn text(&self) -> Option<&'static str> {
        match self {
            TokenNote::Nothing => None,
            TokenNote::FromCommandLine => Some("token from the command line: not saved"),
            TokenNote::InKeyring => Some("token saved in keyring"),
            TokenNote::Saving => Some("saving token…"),
            TokenNote::PlainJson => Some("token read from plain JSON"),
            TokenNote::NotSaved(SecretError::NoKeyring(_)) => Some("token not saved: no keyring"),
            TokenNote::NotSaved(SecretError::Failed(_)) => Some("token not saved: keyring failed"),
        }
    }

    /// The longer story, on hover.
    pub fn detail(&self) -> String {
        match self {
            TokenNote::Nothing | TokenNote::Saving => String::new(),
            TokenNote::FromCommandLine => {
                "Given with --token or BROKER_ADMIN_TOKEN: used for this run, not stored".into()
            }
            TokenNote::InKeyring => {
                format!("Kept in the system keyring (service \"{SERVICE}\", user the ops URL)")
            }
            TokenNote::PlainJson => "An older version of the app wrote the token in plain JSON \
                 in the settings file. The next Connect moves it to the keyring (if there is \
                 one) and removes it from the file."
                .into(),
            TokenNote::NotSaved(e) => format!(
                "{e}. The token is used for this run only and never written to the settings \
                 file: enter it again at the next start."
            ),
        }
    }
}

fn no_keyring() -> SecretError {
    SecretError::NoKeyring("this build has no keyring backend for this system".into())
}

#[cfg(any(target_os = "linux", target_os = "macos", target_os = "windows"))]
mod system {
    use super::{SecretError, SERVICE};

    fn entry(url: &str) -> Result<keyring::Entry, SecretError> {
        keyring::Entry::new(SERVICE, url).map_err(error)
    }

    fn error(e: keyring::Error) -> SecretError {
        match e {
            keyring::Error::NoStorageAccess(e) => SecretError::NoKeyring(e.to_string()),
            keyring::Error::PlatformFailure(e) => {
                // Linux without a D-Bus session or without a Secret Service on it.
                let text = e.to_string();
                if cfg!(target_os = "linux") {
                    SecretError::NoKeyring(format!(
                        "no Secret Service (GNOME Keyring, KWallet, KeePassXC) on the D-Bus \
                         session bus ({text})"
                    ))
                } else {
                    SecretError::Failed(text)
                }
            }
            other => SecretError::Failed(other.to_string()),
        }
    }

    pub fn get(url: &str) -> Result<Option<String>, SecretError> {
        match entry(url)?.get_password() {
            Ok(token) => Ok(Some(token)),
            Err(keyring::Error::NoEntry) => Ok(None),
            Err(e) => Err(error(e)),
        }
    }

    pub fn set(url: &str, token: &str) -> Result<(), SecretError> {
        let entry = entry(url)?;
        if token.is_empty() {
            return match entry.delete_credential() {
                Ok(()) | Err(keyring::Error::NoEntry) => Ok(()),
                Err(e) => Err(error(e)),
            };
        }
        entry.set_password(token).map_err(error)
    }
}

#[cfg(not(any(target_os = "linux", target_os = "macos", target_os = "windows")))]
mod system {
    use super::SecretError;

    pub fn get(_url: &str) -> Result<Option<String>, SecretError> {
        Err(super::no_keyring())
    }

    pub fn set(_url: &str, _token: &str) -> Result<(), SecretError> {
        Err(super::no_keyring())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_round_trip_and_delete() {
        let s = Secrets::memory();
        assert_eq!(s.get("http://a"), Ok(None));
        s.set("http://a", "t1").unwrap();
        s.set("http://b", "t2").unwrap();
        assert_eq!(s.get("http://a"), Ok(Some("t1".into())));
        s.set("http://a", "").unwrap();
        assert_eq!(s.get("http://a"), Ok(None));
        assert_eq!(s.get("http://b"), Ok(Some("t2".into())));
    }

    #[test]
    fn none_says_there_is_no_keyring() {
        assert!(matches!(
            Secrets::None.set("http://a", "t"),
            Err(SecretError::NoKeyring(_))
        ));
        assert!(matches!(
            Secrets::None.get("http://a"),
            Err(SecretError::NoKeyring(_))
        ));
    }

    /// The real system keyring. Without a D-Bus session (as on CI) it must say "no keyring",
    /// not fail otherwise; with one (see `tests/keyring.rs`, which starts a private session
    /// with GNOME Keyring) it must keep and give back the token.
    #[test]
    fn system_keyring_keeps_the_token_or_says_there_is_none() {
        let url = format!("http://test.invalid:{}", std::process::id());
        match Secrets::system().set(&url, "probe-token") {
            Ok(()) => {
                assert_eq!(Secrets::system().get(&url), Ok(Some("probe-token".into())));
                Secrets::system().set(&url, "").unwrap();
                assert_eq!(Secrets::system().get(&url), Ok(None));
            }
            Err(SecretError::NoKeyring(why)) => {
                eprintln!("no keyring here: {why}");
                assert!(Secrets::system().get(&url).is_err());
            }
            Err(e) => panic!("{e}"),
        }
    }
}
