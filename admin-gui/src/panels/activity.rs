//! The activity log: connects, disconnects, link changes and the results of the operator's
//! actions, newest at the bottom.

use egui::RichText;

use super::palette;
use crate::format;
use crate::state::{Level, Model};

pub fn show(ui: &mut egui::Ui, model: &Model) {
    ui.horizontal(|ui| {
        ui.label(RichText::new("Activity").strong());
        ui.label(
            RichText::new(format!("{} entries", model.activity.len()))
                .small()
                .color(palette::MUTED),
        );
    });
    let row_height = ui.text_style_height(&egui::TextStyle::Monospace) + 2.0;
    egui::ScrollArea::vertical()
        .auto_shrink([false, false])
        .stick_to_bottom(true)
        .show_rows(ui, row_height, model.activity.len(), |ui, range| {
            for line in model.activity.range(range) {
                let color = match line.level {
                    Level::Info => ui.visuals().text_color(),
                    Level::Success => palette::GOOD,
                    Level::Warning => palette::WARN,
                    Level::Error => palette::BAD,
                };
                ui.horizontal(|ui| {
                    let time = &format::utc(line.unix)[11..19];
                    ui.label(RichText::new(time).monospace().color(palette::MUTED));
                    ui.label(RichText::new(&line.text).monospace().color(color));
                });
            }
        });
}
