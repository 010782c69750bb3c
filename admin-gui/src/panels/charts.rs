//! Live charts of the last minutes, of the fleet (every instance summed) or of the one instance
//! (seeded from its history): connections, messages in and out per second, refusals,
//! slow-consumer drops. The x axis is time before now, so the newest value is always at the
//! right edge; the charts do not pan or zoom (they are a dashboard, not an analysis tool).

use std::time::{Duration, Instant};

use egui::{Color32, RichText};
use egui_plot::{Line, Plot, PlotPoints};

use super::palette;
use crate::format;
use crate::state::{Sample, HISTORY};

/// The chart settings the operator can change.
pub struct Charts {
    window: Duration,
}

impl Default for Charts {
    fn default() -> Self {
        Charts {
            window: Duration::from_secs(2 * 60),
        }
    }
}

struct Series<'s> {
    name: &'static str,
    color: Color32,
    value: &'s dyn Fn(&Sample) -> f64,
}

impl Charts {
    /// The charts of `subject` (the fleet, or the one instance the app talks to).
    pub fn show(
        &mut self,
        ui: &mut egui::Ui,
        subject: &str,
        samples: &std::collections::VecDeque<Sample>,
    ) {
        ui.horizontal(|ui| {
            ui.label(RichText::new("Last minutes").strong());
            ui.label(RichText::new(subject).monospace().color(palette::MUTED));
            for (label, secs) in [
                ("1 min", 60),
                ("2 min", 120),
                ("5 min", 300),
                ("10 min", HISTORY.as_secs()),
            ] {
                ui.selectable_value(&mut self.window, Duration::from_secs(secs), label);
            }
        });
        let now = Instant::now();
        let window = self.window.as_secs_f64();
        let height = 150.0;
        let link = egui::Id::unique("charts-time");
        ui.columns(4, |cols| {
            chart(
                &mut cols[0],
                "Connections",
                &[
                    Series {
                        name: "clients",
                        color: palette::ACCENT,
                        value: &|s| s.clients,
                    },
                    Series {
                        name: "publishers",
                        color: palette::PUBLISHER,
                        value: &|s| s.publishers,
                    },
                ],
                samples,
                now,
                window,
                height,
                link,
            );
            chart(
                &mut cols[1],
                "Messages / s",
                &[
                    Series {
                        name: "in",
                        color: palette::ACCENT,
                        value: &|s| s.messages_in,
                    },
                    Series {
                        name: "out",
                        color: palette::OUT,
                        value: &|s| s.messages_out,
                    },
                ],
                samples,
                now,
                window,
                height,
                link,
            );
            chart(
                &mut cols[2],
                "Refusals / s",
                &[Series {
                    name: "refused",
                    color: palette::WARN,
                    value: &|s| s.refused,
                }],
                samples,
                now,
                window,
                height,
                link,
            );
            chart(
                &mut cols[3],
                "Slow-consumer drops / s",
                &[Series {
                    name: "drops",
                    color: palette::BAD,
                    value: &|s| s.slow_drops,
                }],
                samples,
                now,
                window,
                height,
                link,
            );
        });
    }
}

#[allow(clippy::too_many_arguments)]
fn chart(
    ui: &mut egui::Ui,
    title: &str,
    series: &[Series<'_>],
    samples: &std::collections::VecDeque<Sample>,
    now: Instant,
    window: f64,
    height: f32,
    link: egui::Id,
) {
    let latest = samples.back();
    ui.horizontal(|ui| {
        ui.label(RichText::new(title).strong());
        if let Some(last) = latest {
            for s in series {
                ui.label(
                    RichText::new(format!("{} {}", s.name, format::rate((s.value)(last))))
                        .color(s.color)
                        .small(),
                );
            }
        }
    });
    Plot::new(title)
        .height(height)
        .allow_drag(false)
        .allow_zoom(false)
        .allow_scroll(false)
        .allow_boxed_zoom(false)
        .allow_double_click_reset(false)
        .show_x(false)
        .include_x(-window)
        .include_x(0.0)
        .include_y(0.0)
        .include_y(1.0)
        .link_cursor(link, [true, false])
        .x_axis_formatter(|mark, _| ago(mark.value))
        .y_axis_formatter(|mark, _| format::rate(mark.value))
        .show(ui, |plot| {
            for s in series {
                let points: PlotPoints<'_> = samples
                    .iter()
                    .filter_map(|sample| {
                        let x = -now.saturating_duration_since(sample.at?).as_secs_f64();
                        (x >= -window).then(|| [x, (s.value)(sample)])
                    })
                    .collect();
                plot.line(
                    Line::new(s.name, points)
                        .color(s.color)
                        .width(1.5)
                        .fill(0.0)
                        .fill_alpha(0.08),
                );
            }
        });
}

/// An x-axis mark (seconds before now, negative) as `-2:30`, or `now`.
fn ago(x: f64) -> String {
    let secs = (-x).round() as i64;
    if secs <= 0 {
        "now".into()
    } else {
        format!("-{}:{:02}", secs / 60, secs % 60)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn axis_marks() {
        assert_eq!(super::ago(0.0), "now");
        assert_eq!(super::ago(-150.0), "-2:30");
        assert_eq!(super::ago(-59.6), "-1:00");
    }
}
