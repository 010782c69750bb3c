//! The app: owns the model, the panels' state and the network worker's handle. Each frame it
//! folds the worker's updates into the model, lays out the panels, and sends the commands the
//! panels produced. Nothing here waits on the network.

use std::time::Duration;

use egui::RichText;

use crate::client::{Client, Command, LinkStatus, Token};
use crate::panels::charts::Charts;
use crate::panels::connect::{self, ConnectAction, ConnectForm};
use crate::panels::connections::{ConnectionsPanel, DetailAction};
use crate::panels::inject::InjectPanel;
use crate::panels::{activity, danger_button, instances, summary};
use crate::secrets::{SecretError, Secrets, TokenNote};
use crate::settings::{Settings, SettingsStore};
use crate::state::{Level, Model};

/// How the app starts.
#[derive(Debug, Default)]
pub struct Options {
    /// Ops URL and token given on the command line or in the environment: connect at once,
    /// and do not store them.
    pub url: Option<String>,
    pub token: Option<Token>,
    /// Where the URL is remembered.
    pub settings: SettingsStore,
    /// Where the token is kept (the system keyring in the app, [`Secrets::None`] by default).
    pub secrets: Secrets,
}

/// What a keyring save reports: the URL, the token, and how it went.
type KeyringAnswer = (String, String, Result<(), SecretError>);

pub struct AdminApp {
    client: Client,
    model: Model,
    settings: SettingsStore,
    saved: Settings,
    secrets: Secrets,
    /// What the keyring holds as far as the app knows: (URL, token).
    kept: Option<(String, String)>,
    token_note: TokenNote,
    /// The answer of a keyring save running on its own thread (a keyring may be slow, or ask
    /// the user to unlock it: never on the UI thread).
    saving: Option<std::sync::mpsc::Receiver<KeyringAnswer>>,
    form: ConnectForm,
    connections: ConnectionsPanel,
    charts: Charts,
    inject: InjectPanel,
    /// The instance whose drain awaits the operator's confirmation.
    confirm_drain: Option<String>,
    last_selected: Option<String>,
}

impl AdminApp {
    pub fn new(ctx: &egui::Context, options: Options) -> std::io::Result<AdminApp> {
        let wake = ctx.clone();
        let client = Client::spawn(move || wake.request_repaint())?;
        let saved = options.settings.load();
        let from_command_line = options.url.is_some() || options.token.is_some();
        let url = options.url.unwrap_or_else(|| saved.url.clone());
        let mut model = Model::default();
        let mut kept = None;
        let (token, token_note) = match options.token {
            Some(t) => (t.expose().to_string(), TokenNote::FromCommandLine),
            None if url.trim().is_empty() => (String::new(), TokenNote::Nothing),
            None => match options.secrets.get(url.trim()) {
                Ok(Some(t)) => {
                    kept = Some((url.trim().to_string(), t.clone()));
                    (t, TokenNote::InKeyring)
                }
                Ok(None) | Err(_) if !saved.plain_token.is_empty() => {
                    model.note(
                        Level::Warning,
                        "the settings file holds the admin token in plain JSON (written by an \
                         older version): the next Connect moves it to the keyring, if there is \
                         one, and removes it from the file",
                    );
                    (saved.plain_token.clone(), TokenNote::PlainJson)
                }
                Ok(None) => (String::new(), TokenNote::Nothing),
                Err(e) => (String::new(), TokenNote::NotSaved(e)),
            },
        };
        let form = ConnectForm { url, token };
        let mut app = AdminApp {
            client,
            model,
            settings: options.settings,
            saved,
            secrets: options.secrets,
            kept,
            token_note,
            saving: None,
            form,
            connections: ConnectionsPanel::default(),
            charts: Charts::default(),
            inject: InjectPanel::default(),
            confirm_drain: None,
            last_selected: None,
        };
        if from_command_line || (!app.form.url.is_empty() && !app.form.token.is_empty()) {
            app.connect(false);
        }
        Ok(app)
    }

    /// The model, for tests.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Where the token is kept, for tests.
    pub fn token_note(&self) -> &TokenNote {
        &self.token_note
    }

    fn connect(&mut self, remember: bool) {
        let url = self.form.url.trim().to_string();
        let token = self.form.token.trim().to_string();
        if remember {
            // The URL in the settings file, the token never (an older version's plain token
            // is left out when the file is written again).
            let settings = Settings {
                url: url.clone(),
                plain_token: String::new(),
            };
            if settings != self.saved {
                match self.settings.save(&settings) {
                    Ok(()) => self.saved = settings,
                    Err(e) => self
                        .model
                        .note(Level::Warning, format!("could not remember the URL: {e}")),
                }
            }
            self.keep_token(&url, &token);
        }
        self.client.send(Command::Connect {
            url,
            token: Token::new(token),
        });
    }

    /// Saves the token for `url` in the keyring, on a thread of its own.
    fn keep_token(&mut self, url: &str, token: &str) {
        if self
            .kept
            .as_ref()
            .is_some_and(|(u, t)| u == url && t == token)
        {
            self.token_note = TokenNote::InKeyring;
            return;
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let secrets = self.secrets.clone();
        let (url, token) = (url.to_string(), token.to_string());
        let spawned = std::thread::Builder::new()
            .name("keyring".into())
            .spawn(move || {
                let result = secrets.set(&url, &token);
                let _ = tx.send((url, token, result));
            });
        match spawned {
            Ok(_) => {
                self.token_note = TokenNote::Saving;
                self.saving = Some(rx);
            }
            Err(e) => {
                self.token_note = TokenNote::NotSaved(SecretError::Failed(e.to_string()));
            }
        }
    }

    /// Takes the answer of a keyring save, if it came.
    fn poll_keyring(&mut self) {
        let Some(rx) = &self.saving else {
            return;
        };
        let (url, token, result) = match rx.try_recv() {
            Ok(answer) => answer,
            Err(std::sync::mpsc::TryRecvError::Empty) => return,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => (
                String::new(),
                String::new(),
                Err(SecretError::Failed("the keyring thread stopped".into())),
            ),
        };
        self.saving = None;
        match result {
            Ok(()) => {
                self.kept = Some((url, token.clone()));
                self.token_note = if token.is_empty() {
                    TokenNote::Nothing
                } else {
                    TokenNote::InKeyring
                };
            }
            Err(e) => {
                self.model.note(
                    Level::Warning,
                    format!("token not saved ({e}): enter it again at the next start"),
                );
                self.token_note = TokenNote::NotSaved(e);
            }
        }
    }

    /// Draws the whole window. `eframe::App::ui` calls this; tests call it through kittest.
    pub fn show(&mut self, ui: &mut egui::Ui) {
        for update in self.client.poll() {
            self.model.apply(update);
        }
        self.poll_keyring();
        let mut commands = Vec::new();

        let mut action = None;
        egui::Panel::top("connect-bar")
            .frame(egui::Frame::side_top_panel(ui.style()).inner_margin(8.0))
            .show(ui, |ui| {
                action = connect::bar(ui, &mut self.form, &self.token_note, &self.model.link);
            });

        if self.model.has_data() {
            self.data_panels(ui, &mut commands, &mut action);
        } else {
            egui::CentralPanel::default().show(ui, |ui| {
                action = action.or(connect::status_page(ui, &self.model.link));
            });
        }

        match action {
            Some(ConnectAction::Connect) => self.connect(true),
            Some(ConnectAction::Disconnect) => commands.push(Command::Disconnect),
            Some(ConnectAction::RetryNow) => commands.push(Command::RetryNow),
            None => {}
        }

        let ctx = ui.ctx().clone();
        self.connections
            .kick_dialog(&ctx, &mut self.model, &mut commands);
        self.drain_dialog(&ctx, &mut commands);

        if let Some(ranges) = self.model.watch_changed() {
            commands.push(Command::Watch(ranges));
        }
        for command in commands {
            self.client.send(command);
        }
        // Countdowns and connection ages move even when nothing arrives.
        if matches!(
            self.model.link,
            LinkStatus::Unreachable { .. } | LinkStatus::Reconnecting { .. }
        ) {
            ctx.request_repaint_after(Duration::from_millis(250));
        } else if self.model.has_data() {
            ctx.request_repaint_after(Duration::from_secs(1));
        }
    }

    fn data_panels(
        &mut self,
        ui: &mut egui::Ui,
        commands: &mut Vec<Command>,
        action: &mut Option<ConnectAction>,
    ) {
        egui::Panel::top("summary")
            .frame(
                egui::Frame::side_top_panel(ui.style()).inner_margin(egui::Margin::symmetric(8, 4)),
            )
            .show(ui, |ui| summary::show(ui, &self.model));

        let selected = self.model.connections.selected().map(str::to_owned);
        if selected != self.last_selected {
            self.inject.follow_selection(selected.as_deref());
            self.last_selected = selected;
        }
        egui::Panel::right("side")
            .resizable(true)
            .default_size(400.0)
            .min_size(320.0)
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .auto_shrink([false, false])
                    .show(ui, |ui| {
                        if let Some(DetailAction::InjectTo(id)) =
                            self.connections.details(ui, &mut self.model)
                        {
                            self.inject.target_connection(&id);
                        }
                        ui.add_space(6.0);
                        ui.separator();
                        self.inject.show(ui, &mut self.model, commands);
                    });
            });

        // After the side panel, so the side panel keeps the full height.
        egui::Panel::bottom("activity")
            .resizable(true)
            .default_size(100.0)
            .show(ui, |ui| activity::show(ui, &self.model));

        egui::CentralPanel::default().show(ui, |ui| {
            if let Some(a) = connect::reconnect_banner(ui, &self.model.link) {
                *action = Some(a);
            }
            if let Some(instance) = instances::show(ui, &self.model) {
                self.confirm_drain = Some(instance);
            }
            ui.add_space(4.0);
            ui.separator();
            // Several instances: the charts are the fleet's (every instance summed); one: that
            // instance's, seeded from its history.
            if self.model.fleet.known && self.model.fleet.rows().len() > 1 {
                let combined = self.model.fleet.combined(std::time::Instant::now());
                let title = format!("the fleet ({} instances)", self.model.fleet.rows().len());
                self.charts.show(ui, &title, &combined);
            } else {
                self.charts
                    .show(ui, self.model.answering(), self.model.history.samples());
            }
            ui.add_space(6.0);
            ui.separator();
            self.connections.table(ui, &mut self.model, commands);
        });
    }

    fn drain_dialog(&mut self, ctx: &egui::Context, commands: &mut Vec<Command>) {
        let Some(instance) = self.confirm_drain.clone() else {
            return;
        };
        let clients = self
            .model
            .instances()
            .iter()
            .find(|r| r.info.instance == instance)
            .map_or(0, |r| {
                r.info.stats.connections.clients + r.info.stats.connections.publishers
            });
        let mut close = false;
        let modal = egui::Modal::new(egui::Id::unique("drain-dialog")).show(ctx, |ui| {
            ui.set_width(420.0);
            ui.label(
                RichText::new(format!("Drain instance {instance}?"))
                    .strong()
                    .size(16.0),
            );
            ui.add_space(4.0);
            ui.label(format!(
                "The instance stops being ready, closes its {clients} connections over the drain \
                 window (clients reconnect to other instances), then exits. This cannot be undone \
                 from here."
            ));
            ui.add_space(8.0);
            ui.horizontal(|ui| {
                if ui.add(danger_button("Drain instance")).clicked() {
                    self.model.clear_outcome(crate::client::Action::Drain);
                    commands.push(Command::Drain {
                        instance: instance.clone(),
                    });
                    close = true;
                }
                if ui.button("Cancel").clicked() {
                    close = true;
                }
            });
        });
        if close || modal.should_close() {
            self.confirm_drain = None;
        }
    }
}

impl eframe::App for AdminApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        self.show(ui);
    }
}
