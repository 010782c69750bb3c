//! The connections table (filter bar, sortable virtual-scrolling table), the selected
//! connection's details, and the kick confirmation.
//!
//! The table draws only the rows in view (`TableBuilder::body().rows`), and the sorted,
//! filtered order is recomputed only when the data or the sort changes, so tens of thousands
//! of rows scroll without stutter.

use egui::{Align, Layout, RichText, TextEdit};
use egui_extras::{Column as TableColumn, TableBuilder};

use super::{caption, danger_button, palette, section, status};
use crate::client::{Action, Command, MAX_ROWS};
use crate::format;
use crate::state::connections::instance_of;
use crate::state::{Column, Model};
use admin_api::{ConnectionInfo, ListFilter};

/// What the connections panels keep between frames.
#[derive(Default)]
pub struct ConnectionsPanel {
    origin: String,
    user: String,
    remote: String,
    id: String,
    publisher: Option<bool>,
    kick: Option<KickDialog>,
}

struct KickDialog {
    connection: ConnectionInfo,
    code: String,
    reason: String,
}

/// What the details panel asks the app to do besides network commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DetailAction {
    /// Aim the inject form at this connection.
    InjectTo(String),
}

const ROW_HEIGHT: f32 = 20.0;
/// A send queue this deep is worth the operator's eye (the reader is falling behind).
const QUEUE_WARN: u64 = 10;

impl ConnectionsPanel {
    /// The filter bar and the table.
    pub fn table(&mut self, ui: &mut egui::Ui, model: &mut Model, commands: &mut Vec<Command>) {
        self.filter_bar(ui, model, commands);
        ui.add_space(4.0);

        let mut clicked_row: Option<String> = None;
        let mut clicked_header: Option<Column> = None;
        let table = &mut model.connections;
        table.refresh_view();
        let rows = table.view_rows();
        let now = format::now_unix();
        let sort = table.sort();
        let selected = table.selected();
        let mut drawn: Option<std::ops::Range<usize>> = None;

        if rows.is_empty() {
            ui.add_space(20.0);
            ui.vertical_centered(|ui| {
                let text = if !table.synced {
                    "Loading connections…"
                } else if table.filter().is_empty() {
                    "No connections"
                } else {
                    "No connections match the filter"
                };
                ui.label(RichText::new(text).color(palette::MUTED));
            });
            return;
        }

        ui.push_id("connections-table", |ui| {
            ui.style_mut().interaction.selectable_labels = false;
            TableBuilder::new(ui)
                .striped(true)
                .resizable(true)
                .sense(egui::Sense::click())
                .cell_layout(Layout::left_to_right(Align::Center))
                .column(TableColumn::initial(118.0).at_least(60.0).clip(true))
                .column(TableColumn::initial(104.0).at_least(50.0).clip(true))
                .column(TableColumn::initial(140.0).at_least(80.0).clip(true))
                .column(TableColumn::initial(170.0).at_least(60.0).clip(true))
                .column(TableColumn::initial(90.0).at_least(40.0).clip(true))
                .column(TableColumn::initial(78.0).at_least(40.0))
                .column(TableColumn::initial(84.0).at_least(50.0))
                .columns(TableColumn::initial(78.0).at_least(50.0), 4)
                .column(TableColumn::initial(56.0).at_least(40.0))
                .column(TableColumn::remainder().at_least(40.0))
                .header(22.0, |mut header| {
                    for column in Column::ALL {
                        header.col(|ui| {
                            let arrow = if sort.column == column {
                                if sort.descending {
                                    " ⬇"
                                } else {
                                    " ⬆"
                                }
                            } else {
                                ""
                            };
                            let text = RichText::new(format!("{}{arrow}", column.title())).strong();
                            let r = ui
                                .add(egui::Label::new(text).sense(egui::Sense::click()))
                                .on_hover_text("Sort by this column (again to reverse)");
                            if r.clicked() {
                                clicked_header = Some(column);
                            }
                        });
                    }
                })
                .body(|body| {
                    body.rows(ROW_HEIGHT, rows.len(), |mut row| {
                        let index = row.index();
                        drawn = Some(match drawn.take() {
                            Some(r) => r.start.min(index)..r.end.max(index + 1),
                            None => index..index + 1,
                        });
                        let id = &rows[index];
                        let Some(c) = table.connection(id) else {
                            return;
                        };
                        row.set_selected(selected == Some(id.as_str()));
                        row.col(|ui| {
                            ui.label(RichText::new(&c.id).monospace());
                        });
                        row.col(|ui| {
                            ui.label(RichText::new(instance_of(c)).monospace());
                        });
                        row.col(|ui| {
                            ui.label(&c.remote_addr);
                        });
                        row.col(|ui| {
                            optional(ui, c.origin.as_deref());
                        });
                        row.col(|ui| {
                            optional(ui, c.user.as_deref());
                        });
                        row.col(|ui| {
                            kind_label(ui, c.publisher);
                        });
                        row.col(|ui| {
                            ui.label(format::duration(now.saturating_sub(c.connected_at)));
                        });
                        for value in [c.messages_in, c.messages_out] {
                            row.col(|ui| number(ui, format::count(value)));
                        }
                        for value in [c.bytes_in, c.bytes_out] {
                            row.col(|ui| number(ui, format::bytes(value)));
                        }
                        row.col(|ui| {
                            let text = RichText::new(format::count(c.send_queue_depth));
                            let text = if c.send_queue_depth >= QUEUE_WARN {
                                text.color(palette::WARN)
                            } else {
                                text
                            };
                            ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
                                ui.label(text);
                            });
                        });
                        row.col(|ui| number(ui, c.shard.to_string()));
                        if row.response().clicked() {
                            clicked_row = Some(id.clone());
                        }
                    });
                });
        });

        table.set_visible(drawn.unwrap_or(0..0));
        if let Some(column) = clicked_header {
            table.sort_by(column);
        }
        if let Some(id) = clicked_row {
            let again = table.selected() == Some(id.as_str());
            table.select(if again { None } else { Some(id) });
        }
    }

    fn filter_bar(&mut self, ui: &mut egui::Ui, model: &mut Model, commands: &mut Vec<Command>) {
        ui.horizontal(|ui| {
            ui.label(RichText::new("Connections").strong().size(15.0));
            ui.add_space(8.0);
            let label = ui.label("Origin contains");
            ui.add(
                TextEdit::singleline(&mut self.origin)
                    .hint_text("http://localhost")
                    .desired_width(150.0),
            )
            .labelled_by(label.id);
            let label = ui.label("User");
            ui.add(
                TextEdit::singleline(&mut self.user)
                    .hint_text("exact name")
                    .desired_width(100.0),
            )
            .labelled_by(label.id);
            let label = ui.label("ID contains");
            ui.add(
                TextEdit::singleline(&mut self.id)
                    .hint_text("b1.3f9a")
                    .desired_width(90.0),
            )
            .labelled_by(label.id);
            let label = ui.label("Address contains");
            ui.add(
                TextEdit::singleline(&mut self.remote)
                    .hint_text("10.0.0.")
                    .desired_width(110.0),
            )
            .labelled_by(label.id);
            ui.selectable_value(&mut self.publisher, None, "All");
            ui.selectable_value(&mut self.publisher, Some(false), "Clients");
            ui.selectable_value(&mut self.publisher, Some(true), "Publishers");
            let filtering = !self.origin.is_empty()
                || !self.user.is_empty()
                || !self.remote.is_empty()
                || !self.id.is_empty()
                || self.publisher.is_some();
            if ui
                .add_enabled(filtering, egui::Button::new("Clear"))
                .clicked()
            {
                self.origin.clear();
                self.user.clear();
                self.remote.clear();
                self.id.clear();
                self.publisher = None;
            }

            ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
                let table = &model.connections;
                let shown = table.len() as u64;
                let mut text = format!(
                    "{} connection{}",
                    format::count(table.server_total),
                    if table.server_total == 1 { "" } else { "s" }
                );
                if !table.filter().is_empty() {
                    text.push_str(" match");
                }
                if shown < table.server_total && table.server_total > MAX_ROWS {
                    text.push_str(&format!(
                        " · first {} listed, narrow the filter",
                        format::count(shown)
                    ));
                }
                ui.label(RichText::new(text).color(palette::MUTED));
                if !table.missing.is_empty() {
                    status(
                        ui,
                        palette::WARN,
                        format!("No answer from {}", table.missing.join(", ")),
                    )
                    .on_hover_text(
                        "These instances did not answer the last list in time: their \
                         connections may be missing or out of date",
                    );
                }
            });
        });

        let filter = ListFilter {
            origin: self.origin.clone(),
            user: self.user.trim().to_string(),
            remote: self.remote.trim().to_string(),
            id: self.id.trim().to_string(),
            publisher: self.publisher,
        };
        if &filter != model.connections.filter() {
            model.connections.set_filter(filter.clone());
            commands.push(Command::SetFilter(filter));
        }
    }

    /// The selected connection, with kick and "send an event to it".
    pub fn details(&mut self, ui: &mut egui::Ui, model: &mut Model) -> Option<DetailAction> {
        let mut action = None;
        section(ui, "Selected connection");
        let Some(id) = model.connections.selected().map(str::to_owned) else {
            ui.label(RichText::new("Click a row to see a connection here.").color(palette::MUTED));
            return None;
        };
        let (connection, departed) = match (
            model.connections.connection(&id),
            model.connections.departed(),
        ) {
            (Some(c), _) => (c.clone(), None),
            (None, Some(d)) => (d.connection.clone(), Some(d.reason.clone())),
            (None, None) => {
                ui.label(
                    RichText::new(format!("{id} is not in the current list")).color(palette::MUTED),
                );
                return None;
            }
        };
        if let Some(reason) = &departed {
            status(
                ui,
                palette::WARN,
                format!("Disconnected ({reason}); last known values:"),
            );
        }
        details_grid(ui, &connection);
        ui.add_space(6.0);
        ui.horizontal(|ui| {
            if ui
                .add_enabled(
                    departed.is_none() && model.may_change(),
                    egui::Button::new("Send event to it"),
                )
                .on_hover_text("Aim the inject form below at this connection")
                .clicked()
            {
                action = Some(DetailAction::InjectTo(connection.id.clone()));
            }
            if ui
                .add_enabled(
                    departed.is_none() && model.may_change(),
                    danger_button("Kick…"),
                )
                .on_disabled_hover_text(super::READ_ONLY_HINT)
                .on_hover_text("Close this connection (asks for confirmation)")
                .clicked()
            {
                self.kick = Some(KickDialog {
                    connection: connection.clone(),
                    code: "4000".into(),
                    reason: "kicked by operator".into(),
                });
            }
            if ui.button("Copy ID").clicked() {
                ui.ctx().copy_text(connection.id.clone());
            }
        });
        if let Some(outcome) = model.outcome(Action::Kick) {
            match &outcome.result {
                Ok(m) => ui.label(RichText::new(m).color(palette::GOOD)),
                Err(m) => ui.label(RichText::new(m).color(palette::BAD)),
            };
        }
        action
    }

    /// The kick confirmation, when open. Pushes the kick command on confirmation.
    pub fn kick_dialog(
        &mut self,
        ctx: &egui::Context,
        model: &mut Model,
        commands: &mut Vec<Command>,
    ) {
        let Some(dialog) = &mut self.kick else {
            return;
        };
        let mut close = false;
        let mut confirmed = false;
        let code = dialog
            .code
            .trim()
            .parse::<u16>()
            .ok()
            .filter(|c| admin_api::kick_code_allowed(*c));
        let reason_ok = dialog.reason.len() <= admin_api::MAX_CLOSE_REASON;
        let modal = egui::Modal::new(egui::Id::unique("kick-dialog")).show(ctx, |ui| {
            ui.set_width(380.0);
            ui.label(
                RichText::new(format!("Kick {}?", dialog.connection.id))
                    .strong()
                    .size(16.0),
            );
            ui.add_space(4.0);
            let c = &dialog.connection;
            let who = c
                .user
                .as_deref()
                .map_or(String::new(), |u| format!(", user {u}"));
            ui.label(format!(
                "{} from {}{who} will be closed. A client that reconnects gets a new connection.",
                if c.publisher { "Publisher" } else { "Client" },
                c.remote_addr
            ));
            ui.add_space(6.0);
            egui::Grid::new("kick-fields")
                .num_columns(2)
                .show(ui, |ui| {
                    let label = ui.label("Close code");
                    ui.add(TextEdit::singleline(&mut dialog.code).desired_width(80.0))
                        .labelled_by(label.id);
                    ui.end_row();
                    let label = ui.label("Reason");
                    ui.add(TextEdit::singleline(&mut dialog.reason).desired_width(240.0))
                        .labelled_by(label.id);
                    ui.end_row();
                });
            if code.is_none() {
                ui.label(
                    RichText::new(format!("The close {}", admin_api::KICK_CODE_RULE))
                        .color(palette::BAD),
                );
            }
            if !reason_ok {
                ui.label(
                    RichText::new(format!(
                        "The reason must fit in {} bytes",
                        admin_api::MAX_CLOSE_REASON
                    ))
                    .color(palette::BAD),
                );
            }
            ui.add_space(8.0);
            ui.horizontal(|ui| {
                if ui
                    .add_enabled(code.is_some() && reason_ok, danger_button("Kick"))
                    .clicked()
                {
                    confirmed = true;
                }
                if ui.button("Cancel").clicked() {
                    close = true;
                }
            });
        });
        if modal.should_close() {
            close = true;
        }
        if confirmed {
            if let Some(code) = code {
                model.clear_outcome(Action::Kick);
                commands.push(Command::Kick {
                    id: dialog.connection.id.clone(),
                    code,
                    reason: dialog.reason.clone(),
                });
                close = true;
            }
        }
        if close {
            self.kick = None;
        }
    }
}

fn details_grid(ui: &mut egui::Ui, c: &ConnectionInfo) {
    let now = format::now_unix();
    egui::Grid::new("connection-details")
        .num_columns(2)
        .striped(true)
        .spacing([12.0, 4.0])
        .show(ui, |ui| {
            let row = |ui: &mut egui::Ui, name: &str, value: RichText| {
                ui.label(caption(name));
                ui.label(value);
                ui.end_row();
            };
            row(ui, "ID", RichText::new(&c.id).monospace());
            row(ui, "Instance", RichText::new(instance_of(c)).monospace());
            row(ui, "Remote address", RichText::new(&c.remote_addr));
            row(
                ui,
                "Origin",
                RichText::new(c.origin.as_deref().unwrap_or("(none)")),
            );
            row(
                ui,
                "User",
                RichText::new(c.user.as_deref().unwrap_or("(anonymous)")),
            );
            row(
                ui,
                "Kind",
                if c.publisher {
                    RichText::new("publisher").color(palette::PUBLISHER)
                } else {
                    RichText::new("client")
                },
            );
            row(
                ui,
                "Connected",
                RichText::new(format!(
                    "{} ({} ago)",
                    format::utc(c.connected_at),
                    format::duration(now.saturating_sub(c.connected_at))
                )),
            );
            row(
                ui,
                "Messages in / out",
                RichText::new(format!(
                    "{} / {}",
                    format::count(c.messages_in),
                    format::count(c.messages_out)
                )),
            );
            row(
                ui,
                "Bytes in / out",
                RichText::new(format!(
                    "{} / {}",
                    format::bytes(c.bytes_in),
                    format::bytes(c.bytes_out)
                )),
            );
            row(
                ui,
                "Send queue",
                RichText::new(format::count(c.send_queue_depth)),
            );
            row(ui, "Shard", RichText::new(c.shard.to_string()));
        });
    ui.label(caption(
        "Counters of the rows on screen and of this one refresh every 2 s.",
    ));
}

fn optional(ui: &mut egui::Ui, value: Option<&str>) {
    match value {
        Some(v) => ui.label(v),
        None => ui.label(RichText::new("—").color(palette::MUTED)),
    };
}

fn kind_label(ui: &mut egui::Ui, publisher: bool) {
    if publisher {
        ui.label(RichText::new("publisher").color(palette::PUBLISHER));
    } else {
        ui.label("client");
    }
}

fn number(ui: &mut egui::Ui, text: String) {
    ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
        ui.label(text);
    });
}

#[cfg(test)]
mod tests {
    #[test]
    fn close_codes() {
        assert!(admin_api::kick_code_allowed(4000));
        assert!(admin_api::kick_code_allowed(1008));
        assert!(!admin_api::kick_code_allowed(1005));
        assert!(!admin_api::kick_code_allowed(999));
        assert!(!admin_api::kick_code_allowed(5000));
    }
}
