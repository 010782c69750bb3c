//! The instances panel: one row per instance of the fleet (status, version, uptime,
//! connections with a sparkline of the last minutes, message rates, last heartbeat) and a
//! drain button per instance (the app asks for confirmation).

use std::time::{Duration, Instant};

use egui::{Align, Layout, RichText, Sense, Stroke};

use super::{caption, danger_button, palette, status};
use crate::format;
use crate::state::{History, InstanceState, InstanceView, Model};

/// How far back a sparkline reaches at most (less while the history is shorter: the line
/// always spans the whole cell).
const SPARK_WINDOW: Duration = Duration::from_secs(5 * 60);

/// The accessible name of an instance's drain button (tests find it by this).
pub fn drain_label(instance: &str) -> String {
    format!("Drain {instance}…")
}

/// Draws the panel; returns the instance the operator asks to drain.
pub fn show(ui: &mut egui::Ui, model: &Model) -> Option<String> {
    let rows = model.instances();
    let mut drain = None;
    ui.horizontal(|ui| {
        ui.label(RichText::new("Instances").strong().size(15.0));
        let scope = if !model.fleet.known {
            "this broker has no fleet routes: this instance only".to_string()
        } else if model.fleet.clustered {
            format!("{} in the fleet (NATS)", rows.len())
        } else {
            "single instance (no NATS)".to_string()
        };
        ui.label(RichText::new(scope).color(palette::MUTED));
    });
    let may_change = model.may_change();
    egui::Grid::new("instances")
        .num_columns(9)
        .striped(true)
        .spacing([14.0, 3.0])
        .min_col_width(24.0)
        .show(ui, |ui| {
            for title in [
                "Status",
                "Instance",
                "Version",
                "Uptime",
                "Clients / publishers",
                "Connections (up to 5 min)",
                "Msgs in / out per s",
                "Heartbeat",
                "",
            ] {
                ui.label(caption(title));
            }
            ui.end_row();
            for row in &rows {
                if instance_row(ui, row, may_change) {
                    drain = Some(row.info.instance.clone());
                }
                ui.end_row();
            }
        });
    drain
}

fn instance_row(ui: &mut egui::Ui, row: &InstanceView<'_>, may_change: bool) -> bool {
    let info = &row.info;
    let stats = &info.stats;
    let state = row.state();
    let color = match state {
        InstanceState::Up => palette::GOOD,
        InstanceState::Draining => palette::WARN,
        InstanceState::Silent => palette::BAD,
    };
    // One widget per grid cell: the dot and its word go in one horizontal.
    ui.horizontal(|ui| {
        status(ui, color, state.label());
    });
    ui.horizontal(|ui| {
        ui.label(RichText::new(&info.instance).monospace().strong());
        if row.answering {
            ui.label(caption("(answering)"))
                .on_hover_text("The instance behind the ops URL: its stream feeds the charts");
        }
    });
    ui.label(&stats.version);
    ui.label(format::duration(stats.uptime_seconds));
    number(
        ui,
        format!(
            "{} / {}",
            format::count(stats.connections.clients),
            format::count(stats.connections.publishers)
        ),
    );
    sparkline(ui, row.history, state);
    let latest = row.history.latest().copied().unwrap_or_default();
    number(
        ui,
        format!(
            "{} / {}",
            format::rate(latest.messages_in),
            format::rate(latest.messages_out)
        ),
    );
    let seen = Duration::from_millis(info.seen_ms_ago);
    ui.label(if seen < Duration::from_secs(3) {
        RichText::new("now")
    } else {
        RichText::new(format!("{} ago", format::duration(seen.as_secs()))).color(palette::WARN)
    });
    let enabled = may_change && state == InstanceState::Up;
    let label = drain_label(&info.instance);
    let button = ui
        .add_enabled(enabled, danger_button("Drain…"))
        .on_hover_text(
            "Stop accepting, close every client over the drain window, then exit \
             (asks for confirmation)",
        )
        .on_disabled_hover_text(if !may_change {
            super::READ_ONLY_HINT
        } else {
            "Only an instance that is up and ready can be drained"
        });
    button.widget_info(|| egui::WidgetInfo::labeled(egui::Role::Button, enabled, &label));
    button.clicked()
}

fn number(ui: &mut egui::Ui, text: String) {
    ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
        ui.label(text);
    });
}

/// A small line of the instance's connections over [`SPARK_WINDOW`], newest at the right,
/// with the current value after it.
fn sparkline(ui: &mut egui::Ui, history: &History, state: InstanceState) {
    let size = egui::vec2(150.0, 18.0);
    ui.horizontal(|ui| {
        let (rect, response) = ui.allocate_exact_size(size, Sense::hover());
        let painter = ui.painter_at(rect);
        painter.rect_filled(rect, 2.0, ui.visuals().extreme_bg_color);
        let now = Instant::now();
        let points: Vec<(f64, f64)> = history
            .samples()
            .iter()
            .filter_map(|s| {
                let ago = now.saturating_duration_since(s.at?).as_secs_f64();
                (ago <= SPARK_WINDOW.as_secs_f64()).then(|| (ago, s.connections()))
            })
            .collect();
        let window = points.first().map_or(1.0, |p| p.0.max(1.0));
        let max = points.iter().map(|p| p.1).fold(1.0, f64::max);
        let color = if state == InstanceState::Silent {
            palette::MUTED
        } else {
            palette::ACCENT
        };
        let to_screen = |(ago, v): (f64, f64)| {
            egui::pos2(
                rect.right() - (ago / window) as f32 * rect.width(),
                rect.bottom() - 2.0 - (v / max) as f32 * (rect.height() - 4.0),
            )
        };
        let line: Vec<egui::Pos2> = points.iter().map(|&p| to_screen(p)).collect();
        if line.len() >= 2 {
            painter.add(egui::Shape::line(line, Stroke::new(1.5, color)));
        }
        if let Some(last) = points.last() {
            response.on_hover_text(format!(
                "{} connections now, at most {} in the last {}",
                last.1,
                max,
                format::duration(window as u64)
            ));
        }
    });
}
