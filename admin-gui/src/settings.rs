//! The ops URL, remembered between runs in a small JSON file in the user's config directory
//! (`$XDG_CONFIG_HOME/broker-admin-gui/settings.json`, else `~/.config/...`). The token is not
//! in it: it goes to the system keyring ([`crate::secrets`]), or nowhere.
//!
//! A file of our own rather than eframe's persistence: it is written only when the operator
//! clicks Connect (not on every exit), and on Unix with mode 0600 (older versions kept the
//! token in it, and a URL may say more than it should).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    pub url: String,
    /// A token an older version of the app wrote here in plain JSON: read, so that the app
    /// still connects (and says where the token came from), never written. The next save
    /// leaves it out of the file.
    #[serde(rename = "token", skip_serializing)]
    pub plain_token: String,
}

/// Where settings live; `None` keeps them in memory only (tests, or no home directory).
#[derive(Clone, Debug, Default)]
pub struct SettingsStore {
    path: Option<PathBuf>,
}

impl SettingsStore {
    pub fn at(path: impl Into<PathBuf>) -> SettingsStore {
        SettingsStore {
            path: Some(path.into()),
        }
    }

    /// A store that never touches the disk.
    pub fn in_memory() -> SettingsStore {
        SettingsStore { path: None }
    }

    /// The user's config directory, if one can be found.
    pub fn user_default() -> SettingsStore {
        let base = std::env::var_os("XDG_CONFIG_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("APPDATA").map(PathBuf::from))
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        SettingsStore {
            path: base.map(|b| b.join("broker-admin-gui").join("settings.json")),
        }
    }

    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// The saved settings, or defaults when there are none or the file is unreadable.
    pub fn load(&self) -> Settings {
        self.path
            .as_ref()
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|bytes| serde_json::from_slice(&bytes).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, settings: &Settings) -> std::io::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_vec_pretty(settings).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        write_private(&tmp, &json)?;
        std::fs::rename(&tmp, path)
    }
}

#[cfg(unix)]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(not(unix))]
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_private_mode() {
        let dir = std::env::temp_dir().join(format!("admin-gui-settings-{}", std::process::id()));
        let store = SettingsStore::at(dir.join("nested").join("settings.json"));
        assert_eq!(store.load(), Settings::default());
        let s = Settings {
            url: "http://127.0.0.1:9090".into(),
            plain_token: String::new(),
        };
        store.save(&s).unwrap();
        assert_eq!(store.load(), s);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(store.path().unwrap())
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_plain_token_from_an_older_version_is_read_and_never_written() {
        let dir = std::env::temp_dir().join(format!("admin-gui-legacy-{}", std::process::id()));
        let path = dir.join("settings.json");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            &path,
            r#"{"url":"http://h:9090","token":"old-plain-token"}"#,
        )
        .unwrap();
        let store = SettingsStore::at(&path);
        let s = store.load();
        assert_eq!(s.plain_token, "old-plain-token");
        store.save(&s).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("old-plain-token"), "{text}");
        assert!(!text.contains("token"), "{text}");
        assert_eq!(store.load().url, "http://h:9090");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn in_memory_store_writes_nothing() {
        let store = SettingsStore::in_memory();
        store.save(&Settings::default()).unwrap();
        assert_eq!(store.load(), Settings::default());
    }
}
