//! Where the admin token goes: the keyring, never the settings file; and the app says so when
//! there is no keyring. Driven through the connection bar against a real broker.

mod common;

use admin_gui::secrets::{Secrets, TokenNote};
use admin_gui::settings::SettingsStore;
use admin_gui::Options;
use common::{app_with, wait_for_label, TempDir, TestBroker, ADMIN_TOKEN, DEADLINE};
use egui_kittest::kittest::Queryable;

/// Types the URL and token into the connection bar and presses Connect.
fn connect_by_hand(
    harness: &mut egui_kittest::Harness<'static, admin_gui::AdminApp>,
    url: &str,
    token: &str,
) {
    harness
        .get_by_label("Ops URL")
        .set_text_value_accesskit(url);
    harness.step();
    harness
        .get_by_label("Admin token")
        .set_text_value_accesskit(token);
    harness.step();
    harness.get_by_label("Connect").click();
    harness.step();
}

fn file_text(store: &SettingsStore) -> String {
    std::fs::read_to_string(store.path().expect("a file store")).unwrap_or_default()
}

#[test]
fn the_token_goes_to_the_keyring_and_never_to_the_settings_file() {
    let broker = TestBroker::start();
    let dir = TempDir::new("keyring");
    let store = SettingsStore::at(dir.0.join("settings.json"));
    let keyring = Secrets::memory();
    let mut harness = app_with(Options {
        settings: store.clone(),
        secrets: keyring.clone(),
        ..Default::default()
    });
    wait_for_label(&mut harness, "Not connected", DEADLINE);
    connect_by_hand(&mut harness, &broker.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, "Live", DEADLINE);
    wait_for_label(&mut harness, "token saved in keyring", DEADLINE);

    let text = file_text(&store);
    assert!(
        text.contains(&broker.ops_url()),
        "the URL is remembered: {text}"
    );
    assert!(!text.contains(ADMIN_TOKEN), "no token in the file: {text}");
    assert_eq!(keyring.get(&broker.ops_url()), Ok(Some(ADMIN_TOKEN.into())));
    drop(harness);

    // The next start finds the token in the keyring and connects by itself.
    let mut harness = app_with(Options {
        settings: store,
        secrets: keyring,
        ..Default::default()
    });
    assert_eq!(harness.state().token_note(), &TokenNote::InKeyring);
    wait_for_label(&mut harness, "Live", DEADLINE);
    wait_for_label(&mut harness, "token saved in keyring", DEADLINE);
}

#[test]
fn without_a_keyring_the_token_is_not_saved_and_the_app_says_so() {
    let broker = TestBroker::start();
    let dir = TempDir::new("nokeyring");
    let store = SettingsStore::at(dir.0.join("settings.json"));
    let mut harness = app_with(Options {
        settings: store.clone(),
        secrets: Secrets::None,
        ..Default::default()
    });
    connect_by_hand(&mut harness, &broker.ops_url(), ADMIN_TOKEN);
    wait_for_label(&mut harness, "Live", DEADLINE);
    wait_for_label(&mut harness, "token not saved: no keyring", DEADLINE);
    let text = file_text(&store);
    assert!(text.contains(&broker.ops_url()));
    assert!(!text.contains(ADMIN_TOKEN), "no token in the file: {text}");
    drop(harness);

    // The next start knows the URL, has no token, and says why.
    let mut harness = app_with(Options {
        settings: store,
        secrets: Secrets::None,
        ..Default::default()
    });
    wait_for_label(&mut harness, "Not connected", DEADLINE);
    wait_for_label(&mut harness, "token not saved: no keyring", DEADLINE);
}

#[test]
fn a_plain_token_from_an_older_version_moves_to_the_keyring() {
    let broker = TestBroker::start();
    let dir = TempDir::new("legacy");
    let path = dir.0.join("settings.json");
    std::fs::write(
        &path,
        format!(
            r#"{{"url":"{}","token":"{ADMIN_TOKEN}"}}"#,
            broker.ops_url()
        ),
    )
    .expect("write the old settings");
    let store = SettingsStore::at(&path);
    let keyring = Secrets::memory();
    let mut harness = app_with(Options {
        settings: store.clone(),
        secrets: keyring.clone(),
        ..Default::default()
    });
    // It still connects, and says where the token came from.
    wait_for_label(&mut harness, "Live", DEADLINE);
    wait_for_label(&mut harness, "token read from plain JSON", DEADLINE);
    assert!(harness
        .query_by_label_contains("holds the admin token in plain JSON")
        .is_some());

    harness.get_by_label("Connect").click();
    wait_for_label(&mut harness, "token saved in keyring", DEADLINE);
    assert!(
        !file_text(&store).contains(ADMIN_TOKEN),
        "moved out of the file"
    );
    assert_eq!(keyring.get(&broker.ops_url()), Ok(Some(ADMIN_TOKEN.into())));
}
