//! The fleet line (instances up, the instance the app talks to, its version and uptime, the
//! token's access) and the headline numbers summed over the fleet: what an operator glances
//! at first.

use egui::{Color32, RichText};

use super::{caption, palette, status};
use crate::format;
use crate::state::Model;

pub fn show(ui: &mut egui::Ui, model: &Model) {
    let Some(stats) = &model.stats else {
        return;
    };
    let fleet = model.fleet_totals();
    ui.add_space(2.0);
    ui.horizontal(|ui| {
        ui.label(caption("FLEET"));
        let instances = if fleet.instances == 1 {
            "1 instance".to_string()
        } else {
            format!("{} instances", fleet.instances)
        };
        let color = if fleet.up == fleet.instances {
            palette::GOOD
        } else {
            palette::WARN
        };
        status(ui, color, format!("{instances}, {} up", fleet.up));
        ui.separator();
        ui.label(caption("ANSWERING"));
        ui.label(RichText::new(&stats.instance).monospace().strong());
        ui.label(caption("VERSION"));
        ui.label(&stats.version);
        ui.label(caption("UP"));
        ui.label(format::duration(stats.uptime_seconds));
        if stats.ready {
            status(ui, palette::GOOD, "Ready");
        } else {
            status(ui, palette::WARN, "Draining / not ready");
        }
        if !model.may_change() {
            status(ui, palette::MUTED, "Read-only token").on_hover_text(super::READ_ONLY_HINT);
        }
    });
    ui.add_space(4.0);

    let latest = fleet.rates;
    let t = fleet.totals;
    ui.horizontal(|ui| {
        kpi(
            ui,
            "CLIENTS",
            format::count(fleet.connections.clients),
            None,
            palette::ACCENT,
        );
        kpi(
            ui,
            "PUBLISHERS",
            format::count(fleet.connections.publishers),
            None,
            palette::PUBLISHER,
        );
        kpi(
            ui,
            "MESSAGES IN / S",
            format::rate(latest.messages_in),
            Some(format!("{} total", format::count(t.messages_in))),
            palette::ACCENT,
        );
        kpi(
            ui,
            "MESSAGES OUT / S",
            format::rate(latest.messages_out),
            Some(format!("{} total", format::count(t.messages_out))),
            palette::OUT,
        );
        kpi(
            ui,
            "EVENTS / S",
            format::rate(latest.events),
            Some(format!("{} total", format::count(t.events))),
            Color32::LIGHT_GRAY,
        );
        kpi(
            ui,
            "REFUSED / S",
            format::rate(latest.refused),
            Some(format!("{} total", format::count(t.refused))),
            if latest.refused > 0.0 {
                palette::WARN
            } else {
                Color32::LIGHT_GRAY
            },
        );
        kpi(
            ui,
            "SLOW-CONSUMER DROPS",
            format::count(t.slow_consumer_drops),
            Some(format!("{}/s now", format::rate(latest.slow_drops))),
            if latest.slow_drops > 0.0 {
                palette::BAD
            } else {
                Color32::LIGHT_GRAY
            },
        );
        kpi(
            ui,
            "DECODE ERRORS",
            format::count(t.decode_errors),
            Some(format!("{}/s now", format::rate(latest.decode_errors))),
            Color32::LIGHT_GRAY,
        );
        kpi(
            ui,
            "TRAFFIC IN / OUT",
            format!(
                "{} / {}",
                format::bytes(t.bytes_in),
                format::bytes(t.bytes_out)
            ),
            None,
            Color32::LIGHT_GRAY,
        );
    });
    ui.add_space(4.0);
}

fn kpi(ui: &mut egui::Ui, title: &str, value: String, sub: Option<String>, color: Color32) {
    egui::Frame::new()
        .fill(ui.visuals().faint_bg_color)
        .stroke(ui.visuals().widgets.noninteractive.bg_stroke)
        .corner_radius(4.0)
        .inner_margin(egui::Margin::symmetric(10, 6))
        .show(ui, |ui| {
            ui.set_min_width(104.0);
            ui.vertical(|ui| {
                ui.label(caption(title));
                ui.label(RichText::new(value).size(20.0).strong().color(color));
                ui.label(caption(sub.as_deref().unwrap_or(" ")));
            });
        });
}
