//! One file per panel. Each draws from the model and turns clicks into [`crate::client::Command`]s
//! (or changes of view state such as the selected row); none talks to the network.

pub mod activity;
pub mod charts;
pub mod connect;
pub mod connections;
pub mod inject;
pub mod instances;
pub mod summary;

use egui::{Color32, RichText};

/// The few colours the app uses, so that a state reads the same everywhere.
pub mod palette {
    use egui::Color32;

    pub const GOOD: Color32 = Color32::from_rgb(0x4c, 0xc9, 0x6b);
    pub const WARN: Color32 = Color32::from_rgb(0xf0, 0xb4, 0x29);
    pub const BAD: Color32 = Color32::from_rgb(0xf0, 0x5a, 0x5a);
    pub const ACCENT: Color32 = Color32::from_rgb(0x4d, 0x9d, 0xe0);
    pub const PUBLISHER: Color32 = Color32::from_rgb(0xb0, 0x84, 0xf0);
    pub const MUTED: Color32 = Color32::from_rgb(0x8a, 0x8f, 0x98);
    pub const OUT: Color32 = Color32::from_rgb(0x3c, 0xc0, 0xb0);
    pub const DANGER_FILL: Color32 = Color32::from_rgb(0x8c, 0x2a, 0x2a);
}

/// A coloured dot and a label, for states. The dot is its own widget so the label reads (and
/// is found by tests) as just the words.
/// Why a control is greyed out for a read-only token.
pub const READ_ONLY_HINT: &str =
    "This token may only read (broker.admin.readToken): inject, kick and drain need the admin token";

pub fn status(ui: &mut egui::Ui, color: Color32, text: impl Into<String>) -> egui::Response {
    let dot = |ui: &mut egui::Ui| {
        let h = ui.text_style_height(&egui::TextStyle::Body);
        let (rect, _) = ui.allocate_exact_size(egui::vec2(h * 0.5, h), egui::Sense::hover());
        ui.painter().circle_filled(rect.center(), h * 0.25, color);
    };
    let words = RichText::new(text.into()).color(color);
    if ui.layout().prefer_right_to_left() {
        let r = ui.label(words);
        dot(ui);
        r
    } else {
        dot(ui);
        ui.label(words)
    }
}

/// A small caption above a value.
pub fn caption(text: &str) -> RichText {
    RichText::new(text).small().color(palette::MUTED)
}

/// A section title inside a side panel.
pub fn section(ui: &mut egui::Ui, title: &str) {
    ui.add_space(4.0);
    ui.label(RichText::new(title).strong().size(15.0));
    ui.add_space(2.0);
}

/// A button styled for destructive actions (kick, drain).
pub fn danger_button(text: &str) -> egui::Button<'_> {
    egui::Button::new(RichText::new(text).color(Color32::WHITE)).fill(palette::DANGER_FILL)
}
