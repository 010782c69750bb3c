//! Inject test events: a form per event type of the protocol with a sensible template, the
//! event as raw JSON (editable, validated before sending), the target, and the result.
//!
//! The form writes the raw JSON; editing the JSON by hand detaches it from the form until
//! "Reset to form" (so a hand edit is never overwritten silently).

use egui::{RichText, TextEdit};
use serde_json::{json, Map, Value};

use super::{palette, section};
use crate::client::{Action, Command};
use crate::state::Model;
use admin_api::{validate_event, Target};

/// The event types of PROTOCOL.md.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    Login,
    Logout,
    Activated,
    Removed,
    FilesUploaded,
    FilesRemoved,
    BucketUploaded,
    BucketRemoved,
    MetaRequest,
    Echo,
}

impl EventKind {
    pub const ALL: [EventKind; 10] = [
        EventKind::Login,
        EventKind::Logout,
        EventKind::Activated,
        EventKind::Removed,
        EventKind::FilesUploaded,
        EventKind::FilesRemoved,
        EventKind::BucketUploaded,
        EventKind::BucketRemoved,
        EventKind::MetaRequest,
        EventKind::Echo,
    ];

    pub fn event_type(self) -> u64 {
        EventKind::ALL.iter().position(|k| *k == self).unwrap_or(0) as u64 + 1
    }

    pub fn name(self) -> &'static str {
        match self {
            EventKind::Login => "Login",
            EventKind::Logout => "Logout",
            EventKind::Activated => "Activated",
            EventKind::Removed => "Removed",
            EventKind::FilesUploaded => "FilesUploaded",
            EventKind::FilesRemoved => "FilesRemoved",
            EventKind::BucketUploaded => "BucketUploaded",
            EventKind::BucketRemoved => "BucketRemoved",
            EventKind::MetaRequest => "MetaRequest",
            EventKind::Echo => "Echo",
        }
    }

    fn uses_username(self) -> bool {
        !matches!(
            self,
            EventKind::FilesRemoved | EventKind::BucketRemoved | EventKind::Echo
        )
    }
}

/// The form's fields; each event type uses some of them.
#[derive(Clone, Debug)]
pub struct Fields {
    pub username: String,
    /// One file name a line.
    pub files: String,
    pub bucket: String,
    pub property: String,
    /// JSON if it parses as JSON, else a string.
    pub val: String,
    pub message: String,
    pub broadcast: bool,
}

impl Default for Fields {
    fn default() -> Self {
        Fields {
            username: "alice".into(),
            files: "report.pdf\nphoto.jpg".into(),
            bucket: "alice-uploads".into(),
            property: "theme".into(),
            val: "\"dark\"".into(),
            message: "Hello from the admin console".into(),
            broadcast: false,
        }
    }
}

/// The event that the form describes.
pub fn template(kind: EventKind, f: &Fields) -> Value {
    let mut event = Map::new();
    event.insert("eventType".into(), kind.event_type().into());
    let user = f.username.trim();
    if kind.uses_username() {
        event.insert("username".into(), user.into());
    }
    let bucket_name = f.bucket.trim();
    let files = || -> Value {
        f.files
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|name| {
                json!({
                    "identifier": slug(name),
                    "name": name,
                    "bucketName": bucket_name,
                })
            })
            .collect()
    };
    match kind {
        EventKind::Login | EventKind::Logout | EventKind::Activated | EventKind::Removed => {}
        EventKind::FilesUploaded | EventKind::FilesRemoved => {
            event.insert("files".into(), files());
        }
        EventKind::BucketUploaded => {
            event.insert(
                "bucket".into(),
                json!({ "identifier": slug(bucket_name), "name": bucket_name, "user": user }),
            );
        }
        EventKind::BucketRemoved => {
            event.insert(
                "bucket".into(),
                json!({ "identifier": slug(bucket_name), "name": bucket_name }),
            );
        }
        EventKind::MetaRequest => {
            event.insert("property".into(), f.property.trim().into());
            let val =
                serde_json::from_str::<Value>(&f.val).unwrap_or_else(|_| f.val.clone().into());
            event.insert("val".into(), val);
        }
        EventKind::Echo => {
            event.insert("message".into(), f.message.clone().into());
            if f.broadcast {
                event.insert("broadcast".into(), true.into());
            }
        }
    }
    Value::Object(event)
}

fn slug(name: &str) -> String {
    let mut out = String::new();
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetKind {
    All,
    User,
    Connection,
}

/// The inject panel's state.
pub struct InjectPanel {
    kind: EventKind,
    fields: Fields,
    raw: String,
    raw_edited: bool,
    target: TargetKind,
    target_user: String,
    target_connection: String,
    /// Waiting for the broker's answer.
    sending: bool,
}

impl Default for InjectPanel {
    fn default() -> Self {
        let fields = Fields::default();
        InjectPanel {
            kind: EventKind::Echo,
            raw: pretty(&template(EventKind::Echo, &fields)),
            fields,
            raw_edited: false,
            target: TargetKind::All,
            target_user: String::new(),
            target_connection: String::new(),
            sending: false,
        }
    }
}

impl InjectPanel {
    /// Aims the form at one connection (from the details panel).
    pub fn target_connection(&mut self, id: &str) {
        self.target = TargetKind::Connection;
        self.target_connection = id.to_string();
    }

    /// Pre-fills the connection target with a newly selected row (the operator can still
    /// edit it, and the target kind stays what they chose).
    pub fn follow_selection(&mut self, selected: Option<&str>) {
        if let Some(id) = selected {
            self.target_connection = id.to_string();
        }
    }

    pub fn show(&mut self, ui: &mut egui::Ui, model: &mut Model, commands: &mut Vec<Command>) {
        section(ui, "Inject event");
        if self.sending && model.outcome(Action::Inject).is_some() {
            self.sending = false;
        }

        let mut form_changed = false;
        ui.horizontal_wrapped(|ui| {
            ui.spacing_mut().item_spacing.x = 4.0;
            for kind in EventKind::ALL {
                let text = format!("{} {}", kind.event_type(), kind.name());
                if ui.selectable_label(self.kind == kind, text).clicked() && self.kind != kind {
                    self.kind = kind;
                    form_changed = true;
                }
            }
        });
        ui.add_space(4.0);
        form_changed |= self.form(ui);
        if form_changed {
            self.raw = pretty(&template(self.kind, &self.fields));
            self.raw_edited = false;
        }

        ui.add_space(4.0);
        let label_id = ui
            .horizontal(|ui| {
                let label = ui.label(RichText::new("Raw JSON").strong());
                if self.raw_edited {
                    ui.label(RichText::new("edited by hand").color(palette::MUTED));
                    if ui.small_button("Reset to form").clicked() {
                        self.raw = pretty(&template(self.kind, &self.fields));
                        self.raw_edited = false;
                    }
                }
                label.id
            })
            .inner;
        let raw = ui
            .add(
                TextEdit::multiline(&mut self.raw)
                    .code_editor()
                    .desired_rows(7)
                    .desired_width(f32::INFINITY),
            )
            .labelled_by(label_id);
        if raw.changed() {
            self.raw_edited = true;
        }
        let event = validate_event(&self.raw);
        match &event {
            Ok(_) => ui.label(RichText::new("✔ valid event").color(palette::GOOD).small()),
            Err(e) => ui.label(RichText::new(format!("✖ {e}")).color(palette::BAD).small()),
        };

        ui.add_space(6.0);
        let target = self.target_ui(ui);

        ui.add_space(6.0);
        ui.horizontal(|ui| {
            let ready = event.is_ok() && target.is_ok() && !self.sending && model.may_change();
            let send = ui
                .add_enabled(
                    ready,
                    egui::Button::new(RichText::new("Send event").strong()),
                )
                .on_disabled_hover_text(match (&event, &target) {
                    _ if !model.may_change() => super::READ_ONLY_HINT.into(),
                    (Err(e), _) => e.clone(),
                    (_, Err(e)) => e.clone(),
                    _ => "Waiting for the broker's answer".into(),
                });
            if send.clicked() {
                if let (Ok(event), Ok(target)) = (event.clone(), target.clone()) {
                    model.clear_outcome(Action::Inject);
                    commands.push(Command::Inject { event, target });
                    self.sending = true;
                }
            }
            if self.sending {
                ui.spinner();
            } else if let Some(outcome) = model.outcome(Action::Inject) {
                match &outcome.result {
                    Ok(m) => ui.label(RichText::new(m).color(palette::GOOD)),
                    Err(m) => ui.label(RichText::new(m).color(palette::BAD)),
                };
            }
        });
        if let Err(e) = &target {
            ui.label(RichText::new(e).color(palette::BAD).small());
        }
    }

    /// The fields of the current event type; true when one changed.
    fn form(&mut self, ui: &mut egui::Ui) -> bool {
        let kind = self.kind;
        let f = &mut self.fields;
        let mut changed = false;
        egui::Grid::new("inject-form")
            .num_columns(2)
            .spacing([8.0, 4.0])
            .show(ui, |ui| {
                let line = |ui: &mut egui::Ui, name: &str, value: &mut String, hint: &str| {
                    let label = ui.label(name);
                    let r = ui
                        .add(
                            TextEdit::singleline(value)
                                .hint_text(hint)
                                .desired_width(f32::INFINITY),
                        )
                        .labelled_by(label.id);
                    ui.end_row();
                    r.changed()
                };
                if kind.uses_username() {
                    changed |= line(ui, "Username", &mut f.username, "alice");
                }
                match kind {
                    EventKind::FilesUploaded | EventKind::FilesRemoved => {
                        let label = ui.label("Files");
                        changed |= ui
                            .add(
                                TextEdit::multiline(&mut f.files)
                                    .hint_text("one file name a line")
                                    .desired_rows(2)
                                    .desired_width(f32::INFINITY),
                            )
                            .labelled_by(label.id)
                            .changed();
                        ui.end_row();
                        changed |= line(ui, "Bucket", &mut f.bucket, "bucket name");
                    }
                    EventKind::BucketUploaded | EventKind::BucketRemoved => {
                        changed |= line(ui, "Bucket", &mut f.bucket, "bucket name");
                    }
                    EventKind::MetaRequest => {
                        changed |= line(ui, "Property", &mut f.property, "property name");
                        changed |= line(ui, "Value", &mut f.val, "JSON, or text");
                    }
                    EventKind::Echo => {
                        changed |= line(ui, "Message", &mut f.message, "text to echo");
                        ui.label("");
                        changed |= ui
                            .checkbox(&mut f.broadcast, "Broadcast (\"broadcast\": true)")
                            .changed();
                        ui.end_row();
                    }
                    _ => {}
                }
            });
        changed
    }

    fn target_ui(&mut self, ui: &mut egui::Ui) -> Result<Target, String> {
        ui.label(RichText::new("Target").strong());
        egui::Grid::new("inject-target")
            .num_columns(2)
            .spacing([8.0, 4.0])
            .show(ui, |ui| {
                ui.radio_value(&mut self.target, TargetKind::All, "All clients");
                ui.label("");
                ui.end_row();
                let radio = ui.radio_value(&mut self.target, TargetKind::User, "User");
                let r = ui
                    .add(
                        TextEdit::singleline(&mut self.target_user)
                            .hint_text("user name")
                            .desired_width(f32::INFINITY),
                    )
                    .labelled_by(radio.id);
                if r.gained_focus() {
                    self.target = TargetKind::User;
                }
                ui.end_row();
                let radio = ui.radio_value(&mut self.target, TargetKind::Connection, "Connection");
                let r = ui
                    .add(
                        TextEdit::singleline(&mut self.target_connection)
                            .hint_text("select a row, or paste an id")
                            .desired_width(f32::INFINITY),
                    )
                    .labelled_by(radio.id);
                if r.gained_focus() {
                    self.target = TargetKind::Connection;
                }
                ui.end_row();
            });
        match self.target {
            TargetKind::All => Ok(Target::All),
            TargetKind::User if self.target_user.trim().is_empty() => {
                Err("enter the user to send to".into())
            }
            TargetKind::User => Ok(Target::User(self.target_user.trim().into())),
            TargetKind::Connection if self.target_connection.trim().is_empty() => {
                Err("select a connection or enter its id".into())
            }
            TargetKind::Connection => Ok(Target::Connection(self.target_connection.trim().into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_template_is_a_valid_event_of_its_type() {
        let f = Fields::default();
        for (i, kind) in EventKind::ALL.into_iter().enumerate() {
            let event = template(kind, &f);
            let text = pretty(&event);
            let parsed = validate_event(&text).unwrap();
            assert_eq!(parsed["eventType"], json!(i + 1), "{kind:?}");
        }
        assert_eq!(
            template(EventKind::Login, &f),
            json!({"eventType": 1, "username": "alice"})
        );
        assert_eq!(
            template(EventKind::Echo, &f),
            json!({"eventType": 10, "message": "Hello from the admin console"})
        );
        let files = template(EventKind::FilesUploaded, &f);
        assert_eq!(files["files"][1]["name"], "photo.jpg");
        assert_eq!(files["files"][1]["identifier"], "photo-jpg");
        assert_eq!(files["username"], "alice");
        assert!(template(EventKind::FilesRemoved, &f)
            .get("username")
            .is_none());
        assert_eq!(
            template(EventKind::BucketUploaded, &f)["bucket"]["user"],
            "alice"
        );
        let meta = template(EventKind::MetaRequest, &f);
        assert_eq!(meta["val"], "dark");
        let f2 = Fields {
            val: "not json".into(),
            broadcast: true,
            ..Fields::default()
        };
        assert_eq!(template(EventKind::MetaRequest, &f2)["val"], "not json");
        assert_eq!(template(EventKind::Echo, &f2)["broadcast"], true);
    }
}
