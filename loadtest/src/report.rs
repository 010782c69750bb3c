//! `--report DIR`: SVG plots and an `index.html` that shows them with the summary.
//!
//! SVG only, drawn by plotters' SVG backend without any font library: text is written as SVG
//! `<text>` elements that the browser lays out, so the report builds and renders on a machine
//! without fontconfig. Per run it draws latency percentiles over time (drift), the latency
//! distribution, and rates with open connections over time.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use hdrhistogram::Histogram;
use plotters::prelude::*;

use crate::progress::si;
use crate::summary::{ListenerGroup, PauseSummary, Summary};

const SIZE: (u32, u32) = (960, 480);

/// Writes the report; returns the path of `index.html`.
pub fn write(dir: &Path, summary: &Summary) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the report directory {}", dir.display()))?;
    let mut sections = String::new();
    if summary.phases.is_empty() {
        sections.push_str(&section(dir, summary, "")?);
    } else {
        for (i, phase) in summary.phases.iter().enumerate() {
            let _ = write!(
                sections,
                "<h2>Phase {}: {}</h2>",
                i + 1,
                escape(&phase.name)
            );
            for (j, run) in phase.runs.iter().enumerate() {
                sections.push_str(&section(dir, run, &format!("p{}r{}-", i + 1, j + 1))?);
            }
        }
    }
    let json = serde_json::to_string_pretty(summary)?;
    let html = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>loadtest {scenario} {run}</title>\n\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
         pre{{background:#f5f5f5;padding:1em;overflow-x:auto}}img{{max-width:100%;border:1px solid #ddd;margin:.5em 0}}\
         table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}}</style>\n\
         </head><body>\n<h1>loadtest {scenario}</h1>\n<p>run <code>{run}</code> against <code>{url}</code></p>\n\
         {sections}\n<h2>Summary (JSON)</h2>\n<details><summary>show</summary><pre>{json}</pre></details>\n</body></html>\n",
        scenario = escape(&summary.scenario),
        run = escape(&summary.run_id),
        url = escape(&summary.url),
        json = escape(&json),
    );
    let index = dir.join("index.html");
    std::fs::write(&index, html).with_context(|| format!("cannot write {}", index.display()))?;
    Ok(index)
}

/// One run's plots and text; `prefix` keeps the file names of mixed runs apart.
fn section(dir: &Path, s: &Summary, prefix: &str) -> anyhow::Result<String> {
    let mut html = String::new();
    let _ = write!(
        html,
        "<h3>{} ({})</h3>\n<pre>{}</pre>\n",
        escape(&s.scenario),
        escape(&s.run_id),
        escape(&s.to_string())
    );
    if let Some(pause) = s.delivery.as_ref().and_then(|d| d.pause.as_ref()) {
        html.push_str(&pause_table(pause));
    }
    if let Some(name) = latency_over_time(dir, s, prefix)? {
        let _ = writeln!(
            html,
            "<img src=\"{name}\" alt=\"latency percentiles over time\">"
        );
    }
    if let Some((measure, _)) = s.headline_latency() {
        if let Some((_, hist)) = s.histograms.iter().find(|(n, _)| n == measure) {
            let name = format!("{prefix}latency-histogram.svg");
            histogram(&dir.join(&name), measure, hist)?;
            let _ = writeln!(
                html,
                "<img src=\"{name}\" alt=\"{measure} latency histogram\">"
            );
        }
    }
    if let Some(name) = rates(dir, s, prefix)? {
        let _ = writeln!(
            html,
            "<img src=\"{name}\" alt=\"rates and open connections over time\">"
        );
    }
    Ok(html)
}

/// Paused against steady listeners, one row per figure.
fn pause_table(p: &PauseSummary) -> String {
    let mut html = format!(
        "<p>{} listeners stopped reading {:.2} s into sending for {:.2} s{}</p>\n\
         <table><tr><th></th><th>paused</th><th>steady</th></tr>\n",
        p.paused_listeners,
        p.at_s,
        p.for_s,
        p.rcvbuf_bytes
            .map(|b| format!(" (SO_RCVBUF {b} B)"))
            .unwrap_or_default()
    );
    for ((label, paused), (_, steady)) in group_cells(&p.paused)
        .into_iter()
        .zip(group_cells(&p.steady))
    {
        let _ = writeln!(
            html,
            "<tr><th>{label}</th><td>{}</td><td>{}</td></tr>",
            escape(&paused),
            escape(&steady)
        );
    }
    html.push_str("</table>\n");
    html
}

/// One group's figures as table cells, labelled.
fn group_cells(g: &ListenerGroup) -> Vec<(&'static str, String)> {
    let codes = |m: &std::collections::BTreeMap<String, usize>| {
        if m.is_empty() {
            "-".to_owned()
        } else {
            m.iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    let ms = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} ms"));
    let (caught_up, catch_up) = match &g.catch_up {
        Some(c) => (
            format!("{} of {}", c.caught_up, c.resumed),
            format!("{} / {} / {}", ms(c.min_ms), ms(c.p50_ms), ms(c.max_ms)),
        ),
        None => ("-".to_owned(), "-".to_owned()),
    };
    vec![
        ("listeners", g.listeners.to_string()),
        ("completeness", format!("{:.4}%", g.completeness * 100.0)),
        ("listeners that lost events", g.lossy_listeners.to_string()),
        ("events missing in all", g.missing.to_string()),
        ("most missed by one", g.max_missing.to_string()),
        ("closed by server, by code", codes(&g.closed_by_server)),
        ("no close frame (1006)", codes(&g.no_close_frame_by)),
        ("open at end", g.open_at_end.to_string()),
        ("caught up after resuming", caught_up),
        ("catch-up min / p50 / max", catch_up),
    ]
}

fn plot_err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("plotting failed: {e}")
}

fn latency_over_time(dir: &Path, s: &Summary, prefix: &str) -> anyhow::Result<Option<String>> {
    let points: Vec<_> = s
        .windows
        .iter()
        .filter_map(|w| w.latency.map(|p| (w.t_s, p)))
        .collect();
    if points.is_empty() {
        return Ok(None);
    }
    let measure = match s.headline_latency() {
        Some((m, _)) if m != "handshake" || s.scenario == "connect" => m.to_owned(),
        _ => "latency".to_owned(),
    };
    let name = format!("{prefix}latency-over-time.svg");
    let path = dir.join(&name);
    let t_max = s.windows.last().map_or(1.0, |w| w.t_s).max(1e-3);
    // Whole decades, so the log axis always has labelled powers of ten.
    let lo = decade_below(
        points
            .iter()
            .map(|(_, p)| p.p50_ms)
            .fold(f64::INFINITY, f64::min),
    );
    let hi = decade_above(points.iter().map(|(_, p)| p.max_ms).fold(0.0, f64::max)).max(lo * 10.0);

    let root = SVGBackend::new(&path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{measure} latency per {} window", window_label(s)),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, (lo..hi).log_scale())
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("latency (ms, log)")
        .y_label_formatter(&|v| axis_ms(*v))
        .draw()
        .map_err(plot_err)?;
    let series: [Series; 5] = [
        ("p50", RGBColor(31, 119, 180), |p| p.p50_ms),
        ("p90", RGBColor(44, 160, 44), |p| p.p90_ms),
        ("p99", RGBColor(255, 127, 14), |p| p.p99_ms),
        ("p99.9", RGBColor(214, 39, 40), |p| p.p999_ms),
        ("max", RGBColor(100, 100, 100), |p| p.max_ms),
    ];
    for (label, color, get) in series {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|(t, p)| (*t, get(p).max(lo))),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(Some(name))
}

/// A line of the percentile plot: label, colour, and which percentile it draws.
type Series = (
    &'static str,
    RGBColor,
    fn(&crate::stats::Percentiles) -> f64,
);

fn window_label(s: &Summary) -> String {
    s.windows
        .first()
        .map(|w| format!("{:.1} s", w.len_s))
        .unwrap_or_else(|| "time".into())
}

/// The distribution on log-spaced buckets (each 25% wider than the last), so microsecond
/// medians and second-long tails fit one picture.
fn histogram(path: &Path, measure: &str, hist: &Histogram<u64>) -> anyhow::Result<()> {
    let mut buckets = Vec::new();
    let mut lower = hist.min().max(1) as f64;
    let first = hist.min().max(1);
    for v in hist.iter_log(first, 1.25) {
        let upper = v.value_iterated_to() as f64;
        let count = v.count_since_last_iteration();
        if count > 0 {
            buckets.push((lower / 1000.0, (upper.max(lower + 1.0)) / 1000.0, count));
        }
        lower = upper;
    }
    if buckets.is_empty() {
        return Ok(());
    }
    let x_lo = decade_below(buckets.first().map_or(0.001, |b| b.0));
    let x_hi = decade_above(buckets.last().map_or(1.0, |b| b.1)).max(x_lo * 10.0);
    let y_hi = buckets.iter().map(|b| b.2).max().unwrap_or(1) as f64 * 1.1;

    let root = SVGBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let p = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{measure} latency: n={} p50={:.3} ms p99={:.3} ms max={:.3} ms",
                hist.len(),
                p(0.5),
                p(0.99),
                hist.max() as f64 / 1000.0
            ),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0f64..y_hi)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log)")
        .y_desc("samples")
        .x_label_formatter(&|v| axis_ms(*v))
        .y_label_formatter(&|v| si(*v))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(buckets.iter().map(|(lo, hi, count)| {
            Rectangle::new(
                [(*lo, 0.0), (*hi, *count as f64)],
                RGBColor(31, 119, 180).mix(0.7).filled(),
            )
        }))
        .map_err(plot_err)?;
    for (q, label, color) in [
        (0.5, "p50", RGBColor(44, 160, 44)),
        (0.99, "p99", RGBColor(214, 39, 40)),
    ] {
        let x = p(q).max(x_lo);
        chart
            .draw_series(LineSeries::new(
                [(x, 0.0), (x, y_hi)],
                color.stroke_width(2),
            ))
            .map_err(plot_err)?
            .label(label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(())
}

fn rates(dir: &Path, s: &Summary, prefix: &str) -> anyhow::Result<Option<String>> {
    if s.windows.is_empty() {
        return Ok(None);
    }
    let name = format!("{prefix}rates.svg");
    let path = dir.join(&name);
    let t_max = s.windows.last().map_or(1.0, |w| w.t_s).max(1e-3);
    let r_max = s
        .windows
        .iter()
        .map(|w| w.sent_per_s.max(w.received_per_s))
        .fold(1.0, f64::max)
        * 1.1;
    let open_max = s.windows.iter().map(|w| w.open).max().unwrap_or(1).max(1) as f64 * 1.1;

    let root = SVGBackend::new(&path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .caption("rates and open connections", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0f64..t_max, 0f64..r_max)
        .map_err(plot_err)?
        .set_secondary_coord(0f64..t_max, 0f64..open_max);
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("messages per second")
        .y_label_formatter(&|v| si(*v))
        .draw()
        .map_err(plot_err)?;
    chart
        .configure_secondary_axes()
        .y_desc("open connections")
        .y_label_formatter(&|v| si(*v))
        .draw()
        .map_err(plot_err)?;
    let sent = RGBColor(31, 119, 180);
    let received = RGBColor(44, 160, 44);
    let open = RGBColor(150, 150, 150);
    chart
        .draw_series(LineSeries::new(
            s.windows.iter().map(|w| (w.t_s, w.sent_per_s)),
            sent.stroke_width(2),
        ))
        .map_err(plot_err)?
        .label("sent/s")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], sent.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(
            s.windows.iter().map(|w| (w.t_s, w.received_per_s)),
            received.stroke_width(2),
        ))
        .map_err(plot_err)?
        .label("received/s")
        .legend(move |(x, y)| {
            PathElement::new(vec![(x, y), (x + 20, y)], received.stroke_width(2))
        });
    chart
        .draw_secondary_series(LineSeries::new(
            s.windows.iter().map(|w| (w.t_s, w.open as f64)),
            open.stroke_width(2),
        ))
        .map_err(plot_err)?
        .label("open connections (right axis)")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], open.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()
        .map_err(plot_err)?;
    root.present().map_err(plot_err)?;
    Ok(Some(name))
}

/// The power of ten at or below `v` (at least 1 µs).
fn decade_below(v: f64) -> f64 {
    10f64.powf(v.max(0.001).log10().floor())
}

/// The power of ten at or above `v`.
fn decade_above(v: f64) -> f64 {
    10f64.powf(v.max(0.001).log10().ceil())
}

/// Axis labels for milliseconds: `0.05`, `2`, `300`, `1.5k`, without trailing `.0` noise.
fn axis_ms(v: f64) -> String {
    if v >= 1000.0 {
        si(v)
    } else if v >= 1.0 {
        format!("{}", (v * 10.0).round() / 10.0)
    } else {
        format!("{}", (v * 1000.0).round() / 1000.0)
    }
}

/// Minimal HTML escaping for text placed in elements and attributes.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}
