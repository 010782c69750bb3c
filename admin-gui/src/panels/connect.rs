//! The connection bar (ops URL, token, connect) and the full-page states shown while there is
//! no broker data: not connected, connecting, bad token, unreachable.

use std::time::Instant;

use egui::{Align, Layout, RichText, TextEdit};

use super::{palette, status};
use crate::client::LinkStatus;
use crate::secrets::TokenNote;

/// What the operator typed in the connection bar.
#[derive(Default)]
pub struct ConnectForm {
    pub url: String,
    pub token: String,
}

/// A click in the connection bar or on a status page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectAction {
    Connect,
    Disconnect,
    RetryNow,
}

/// The top bar: title, URL, token (never shown in clear), Connect/Disconnect, link state.
pub fn bar(
    ui: &mut egui::Ui,
    form: &mut ConnectForm,
    note: &TokenNote,
    link: &LinkStatus,
) -> Option<ConnectAction> {
    let mut action = None;
    ui.horizontal(|ui| {
        ui.label(RichText::new("Broker admin").strong().size(17.0));
        ui.separator();

        let label = ui.label("Ops URL");
        let url = ui
            .add(
                TextEdit::singleline(&mut form.url)
                    .hint_text("http://127.0.0.1:9090")
                    .desired_width(230.0),
            )
            .labelled_by(label.id);
        let label = ui.label("Admin token");
        let token = ui
            .add(
                TextEdit::singleline(&mut form.token)
                    .password(true)
                    .hint_text("broker.admin.token")
                    .desired_width(190.0),
            )
            .labelled_by(label.id);
        if let Some(text) = note.text() {
            let color = match note {
                TokenNote::NotSaved(_) | TokenNote::PlainJson => palette::WARN,
                _ => palette::MUTED,
            };
            let r = ui.label(RichText::new(text).small().color(color));
            let detail = note.detail();
            if !detail.is_empty() {
                r.on_hover_text(detail);
            }
        }
        let enter = (url.lost_focus() || token.lost_focus())
            && ui.input(|i| i.key_pressed(egui::Key::Enter));

        if ui.button("Connect").clicked() || enter {
            action = Some(ConnectAction::Connect);
        }
        if !matches!(link, LinkStatus::Idle) && ui.button("Disconnect").clicked() {
            action = Some(ConnectAction::Disconnect);
        }

        ui.with_layout(Layout::right_to_left(Align::Center), |ui| {
            link_chip(ui, link);
        });
    });
    action
}

/// The link state in a few words, at the right of the bar.
fn link_chip(ui: &mut egui::Ui, link: &LinkStatus) {
    let now = Instant::now();
    match link {
        LinkStatus::Idle => {
            status(ui, palette::MUTED, "Not connected");
        }
        LinkStatus::Connecting { .. } => {
            status(ui, palette::WARN, "Connecting…");
            ui.spinner();
        }
        LinkStatus::Live { url, streaming } => {
            let text = if *streaming { "Live" } else { "Live (polling)" };
            status(ui, palette::GOOD, text).on_hover_text(if *streaming {
                format!("Live event stream from {url}")
            } else {
                format!("{url} has no event stream: stats are polled every second")
            });
        }
        LinkStatus::Unauthorized { .. } => {
            status(ui, palette::BAD, "Bad token (401)");
        }
        LinkStatus::Unreachable {
            error, retry_at, ..
        } => {
            status(
                ui,
                palette::BAD,
                format!("Unreachable · {}", retry_phrase(*retry_at, now)),
            )
            .on_hover_text(error);
        }
        LinkStatus::Reconnecting {
            error,
            attempt,
            retry_at,
            ..
        } => {
            status(
                ui,
                palette::WARN,
                format!(
                    "Reconnecting · {} (attempt {attempt})",
                    retry_phrase(*retry_at, now)
                ),
            )
            .on_hover_text(error);
        }
        LinkStatus::InvalidUrl { message } => {
            status(ui, palette::BAD, "Invalid URL").on_hover_text(message);
        }
    }
}

/// `retry in 4 s`, or `retrying…` once the wait is over.
pub fn retry_phrase(retry_at: Instant, now: Instant) -> String {
    let left = retry_at.saturating_duration_since(now);
    if left.is_zero() {
        "retrying…".to_string()
    } else {
        format!(
            "retry in {} s",
            left.as_secs() + u64::from(left.subsec_millis() > 0)
        )
    }
}

/// The whole window while there is no data to show: says what is going on and what to do.
pub fn status_page(ui: &mut egui::Ui, link: &LinkStatus) -> Option<ConnectAction> {
    let mut action = None;
    let now = Instant::now();
    ui.vertical_centered(|ui| {
        ui.add_space(ui.available_height() * 0.22);
        ui.set_max_width(560.0);
        match link {
            LinkStatus::Idle => {
                ui.label(RichText::new("Not connected").size(22.0).strong());
                ui.add_space(8.0);
                ui.label(
                    "Enter the broker's ops URL (its broker.ops listener, e.g. \
                     http://127.0.0.1:9090) and the admin token (broker.admin.token or \
                     BROKER_ADMIN_TOKEN on the broker), then press Connect.",
                );
            }
            LinkStatus::Connecting { url } => {
                ui.spinner();
                ui.label(RichText::new(format!("Connecting to {url}…")).size(18.0));
            }
            LinkStatus::Live { url, .. } => {
                ui.spinner();
                ui.label(RichText::new(format!("Loading from {url}…")).size(18.0));
            }
            LinkStatus::Unauthorized { url, message } => {
                ui.label(
                    RichText::new("Bad token")
                        .size(22.0)
                        .strong()
                        .color(palette::BAD),
                );
                ui.add_space(8.0);
                ui.label(format!("{url} answered 401 Unauthorized: {message}"));
                ui.label(
                    "Check the token against broker.admin.token (or BROKER_ADMIN_TOKEN) on the \
                     broker, enter it above and press Connect. The app does not retry a refused \
                     token by itself.",
                );
            }
            LinkStatus::Unreachable {
                url,
                error,
                attempt,
                retry_at,
            }
            | LinkStatus::Reconnecting {
                url,
                error,
                attempt,
                retry_at,
            } => {
                let title = if matches!(link, LinkStatus::Unreachable { .. }) {
                    "Broker unreachable"
                } else {
                    "Reconnecting"
                };
                ui.label(RichText::new(title).size(22.0).strong().color(palette::BAD));
                ui.add_space(8.0);
                ui.label(format!("{url}: {error}"));
                ui.add_space(4.0);
                ui.label(
                    RichText::new(format!(
                        "Attempt {attempt} failed; {}. Waits double up to 30 s.",
                        retry_phrase(*retry_at, now)
                    ))
                    .color(palette::MUTED),
                );
                ui.add_space(8.0);
                if ui.button("Retry now").clicked() {
                    action = Some(ConnectAction::RetryNow);
                }
            }
            LinkStatus::InvalidUrl { message } => {
                ui.label(
                    RichText::new("Invalid URL")
                        .size(22.0)
                        .strong()
                        .color(palette::BAD),
                );
                ui.add_space(8.0);
                ui.label(message);
            }
        }
    });
    action
}

/// The strip above the data while the link is down but the last data is still shown.
pub fn reconnect_banner(ui: &mut egui::Ui, link: &LinkStatus) -> Option<ConnectAction> {
    let LinkStatus::Reconnecting {
        error,
        attempt,
        retry_at,
        ..
    } = link
    else {
        return None;
    };
    let mut action = None;
    egui::Frame::new()
        .fill(egui::Color32::from_rgb(0x4a, 0x3a, 0x10))
        .inner_margin(6.0)
        .corner_radius(4.0)
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.label(
                    RichText::new(format!(
                        "Connection lost: {error}. Showing the last data; {} (attempt {attempt}).",
                        retry_phrase(*retry_at, Instant::now())
                    ))
                    .color(palette::WARN),
                );
                if ui.small_button("Retry now").clicked() {
                    action = Some(ConnectAction::RetryNow);
                }
            });
        });
    ui.add_space(4.0);
    action
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn retry_phrases() {
        let now = Instant::now();
        assert_eq!(retry_phrase(now, now), "retrying…");
        assert_eq!(
            retry_phrase(now + Duration::from_millis(3200), now),
            "retry in 4 s"
        );
        assert_eq!(
            retry_phrase(now + Duration::from_secs(2), now),
            "retry in 2 s"
        );
    }
}
