//! Pass or fail: thresholds (`--threshold 'p99<50ms'`) checked against the summary, and the
//! built-in rule that a run where most connection attempts failed has failed.
//!
//! A CI pipeline or a deploy gate needs a yes or no, not a table to read. Every threshold is one
//! comparison `METRIC OP VALUE`; the verdict lists each with the measured figure, and the binary
//! exits 1 when any failed, printing one line per failure that names the threshold as written.
//!
//! Metrics (see the README for the full list):
//! - latency: `p50`, `p90`, `p99`, `p99.9` (or `p999`), `max`, `mean`, `min`, of the scenario's
//!   headline measure (`handshake` for connect, `rtt` for echo and soak, `delivery` for broadcast
//!   and publish), or of a named one: `handshake.p99`, `rtt.p50`, `publish_request.max`, ...;
//!   values take `us`, `ms` (the default) or `s`;
//! - `completeness` (0 to 1, or a percentage such as `99.9%`), `missing`, `duplicates`;
//! - `established`, `failed` (connection attempts), `failure_rate` (failed over attempts),
//!   `dropped`, `errors`, `sent`, `received`, `sent_per_s`, `received_per_s`, `peak_open`.

use std::fmt;
use std::path::Path;

use anyhow::{anyhow, bail, Context as _};
use serde::{Deserialize, Serialize};

use crate::summary::Summary;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl Op {
    fn holds(self, actual: f64, limit: f64) -> bool {
        match self {
            Op::Lt => actual < limit,
            Op::Le => actual <= limit,
            Op::Gt => actual > limit,
            Op::Ge => actual >= limit,
            Op::Eq => (actual - limit).abs() <= f64::EPSILON * limit.abs().max(1.0),
        }
    }
}

/// What a threshold looks at.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// A latency statistic in milliseconds; `measure: None` is the scenario's headline measure.
    Latency { measure: Option<String>, stat: Stat },
    /// A figure of the summary by name (`completeness`, `failed`, ...).
    Figure(Figure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stat {
    Min,
    Mean,
    P50,
    P90,
    P99,
    P999,
    Max,
}

impl Stat {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "min" => Stat::Min,
            "mean" => Stat::Mean,
            "p50" | "median" => Stat::P50,
            "p90" => Stat::P90,
            "p99" => Stat::P99,
            "p99.9" | "p999" => Stat::P999,
            "max" => Stat::Max,
            _ => return None,
        })
    }

    fn label(self) -> &'static str {
        match self {
            Stat::Min => "min",
            Stat::Mean => "mean",
            Stat::P50 => "p50",
            Stat::P90 => "p90",
            Stat::P99 => "p99",
            Stat::P999 => "p99.9",
            Stat::Max => "max",
        }
    }
}

/// The non-latency figures a threshold may name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Figure {
    Completeness,
    Missing,
    Duplicates,
    Established,
    Failed,
    FailureRate,
    Dropped,
    Errors,
    Sent,
    Received,
    SentPerS,
    ReceivedPerS,
    PeakOpen,
    OutOfOrder,
    PublishLost,
    RecoveriesIncomplete,
    NotReconnected,
}

impl Figure {
    pub const ALL: [Figure; 17] = [
        Figure::Completeness,
        Figure::Missing,
        Figure::Duplicates,
        Figure::Established,
        Figure::Failed,
        Figure::FailureRate,
        Figure::Dropped,
        Figure::Errors,
        Figure::Sent,
        Figure::Received,
        Figure::SentPerS,
        Figure::ReceivedPerS,
        Figure::PeakOpen,
        Figure::OutOfOrder,
        Figure::PublishLost,
        Figure::RecoveriesIncomplete,
        Figure::NotReconnected,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Figure::Completeness => "completeness",
            Figure::Missing => "missing",
            Figure::Duplicates => "duplicates",
            Figure::Established => "established",
            Figure::Failed => "failed",
            Figure::FailureRate => "failure_rate",
            Figure::Dropped => "dropped",
            Figure::Errors => "errors",
            Figure::Sent => "sent",
            Figure::Received => "received",
            Figure::SentPerS => "sent_per_s",
            Figure::ReceivedPerS => "received_per_s",
            Figure::PeakOpen => "peak_open",
            Figure::OutOfOrder => "out_of_order",
            Figure::PublishLost => "publish_lost",
            Figure::RecoveriesIncomplete => "recoveries_incomplete",
            Figure::NotReconnected => "not_reconnected",
        }
    }

    /// A share (0 to 1) rather than a count: `%` is allowed in its value.
    fn is_share(self) -> bool {
        matches!(self, Figure::Completeness | Figure::FailureRate)
    }

    /// The figure in `s`, `None` when the run did not measure it (no delivery in an echo run).
    fn of(self, s: &Summary) -> Option<f64> {
        let c = &s.connections;
        let d = s.delivery.as_ref();
        let fo = s.failover.as_ref();
        Some(match self {
            Figure::Completeness => d?.completeness,
            Figure::Missing => d?.missing as f64,
            Figure::Duplicates => d?.duplicates as f64,
            Figure::Established => c.established as f64,
            Figure::Failed => c.failed as f64,
            Figure::FailureRate => {
                let attempts = c.established + c.failed;
                if attempts == 0 {
                    return None;
                }
                c.failed as f64 / attempts as f64
            }
            Figure::Dropped => c.dropped as f64,
            Figure::Errors => s.messages.errors as f64,
            Figure::Sent => s.messages.sent as f64,
            Figure::Received => s.messages.received as f64,
            Figure::SentPerS => s.messages.sent_per_s,
            Figure::ReceivedPerS => s.messages.received_per_s,
            Figure::PeakOpen => c.peak_open as f64,
            Figure::OutOfOrder => fo?.out_of_order as f64,
            Figure::PublishLost => fo?.publish_lost as f64,
            Figure::RecoveriesIncomplete => fo?.recoveries_incomplete as f64,
            Figure::NotReconnected => fo?.not_reconnected as f64,
        })
    }
}

/// One `METRIC OP VALUE` comparison, as the operator wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct Threshold {
    pub text: String,
    pub metric: Metric,
    pub op: Op,
    /// In milliseconds for latencies, a 0..1 share for shares, else the figure's own unit.
    pub limit: f64,
}

impl std::str::FromStr for Threshold {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let Some(at) = t.find(['<', '>', '=']) else {
            return Err(format!(
                "`{text}` has no comparison: write METRIC OP VALUE, e.g. `p99<50ms` or `completeness>=1`"
            ));
        };
        let (name, rest) = t.split_at(at);
        let (op, value) = if let Some(v) = rest.strip_prefix("<=") {
            (Op::Le, v)
        } else if let Some(v) = rest.strip_prefix(">=") {
            (Op::Ge, v)
        } else if let Some(v) = rest.strip_prefix("==") {
            (Op::Eq, v)
        } else if let Some(v) = rest.strip_prefix('<') {
            (Op::Lt, v)
        } else if let Some(v) = rest.strip_prefix('>') {
            (Op::Gt, v)
        } else if let Some(v) = rest.strip_prefix('=') {
            (Op::Eq, v)
        } else {
            return Err(format!(
                "`{text}`: unknown comparison (use <, <=, >, >=, ==)"
            ));
        };
        if name.is_empty() {
            return Err(format!("`{text}` names no metric"));
        }
        let name = name.to_ascii_lowercase();
        let metric = parse_metric(&name).ok_or_else(|| {
            let figures: Vec<&str> = Figure::ALL.iter().map(|f| f.label()).collect();
            format!(
                "`{text}`: unknown metric `{name}`; use p50, p90, p99, p99.9, max, mean, min \
                 (optionally as MEASURE.p99, e.g. handshake.p99), or one of {}",
                figures.join(", ")
            )
        })?;
        let limit = parse_value(&metric, value).map_err(|e| format!("`{text}`: {e}"))?;
        Ok(Threshold {
            text: text.trim().to_owned(),
            metric,
            op,
            limit,
        })
    }
}

fn parse_metric(name: &str) -> Option<Metric> {
    if let Some(stat) = Stat::parse(name) {
        return Some(Metric::Latency {
            measure: None,
            stat,
        });
    }
    if let Some(f) = Figure::ALL.iter().find(|f| f.label() == name) {
        return Some(Metric::Figure(*f));
    }
    // `handshake.p99`, `delivery.p99.9`: the measure is everything before the first dot.
    let (measure, stat) = name.split_once('.')?;
    let stat = Stat::parse(stat)?;
    let ok = !measure.is_empty()
        && measure
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then(|| Metric::Latency {
        measure: Some(measure.to_owned()),
        stat,
    })
}

fn parse_value(metric: &Metric, value: &str) -> Result<f64, String> {
    let number = |s: &str| -> Result<f64, String> {
        match s.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(format!("`{value}` is not a number")),
        }
    };
    match metric {
        Metric::Latency { .. } => {
            let (n, scale) = if let Some(n) = value.strip_suffix("us") {
                (n, 0.001)
            } else if let Some(n) = value.strip_suffix("µs") {
                (n, 0.001)
            } else if let Some(n) = value.strip_suffix("ms") {
                (n, 1.0)
            } else if let Some(n) = value.strip_suffix('s') {
                (n, 1000.0)
            } else {
                (value, 1.0)
            };
            Ok(number(n)? * scale)
        }
        Metric::Figure(f) => match value.strip_suffix('%') {
            Some(n) if f.is_share() => Ok(number(n)? / 100.0),
            Some(_) => Err(format!(
                "`%` only fits shares (completeness, failure_rate), not `{}`",
                f.label()
            )),
            None => number(value),
        },
    }
}

/// Reads thresholds from a file: one per line; blank lines and `#` comments are skipped.
pub fn load_file(path: &Path) -> anyhow::Result<Vec<Threshold>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the thresholds file {}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        out.push(
            line.parse::<Threshold>()
                .map_err(|e| anyhow!("{} line {}: {e}", path.display(), n + 1))?,
        );
    }
    if out.is_empty() {
        bail!("{}: no thresholds in the file", path.display());
    }
    Ok(out)
}

/// The outcome of one check.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Check {
    /// The threshold as written, or `run` for the built-in rule.
    pub check: String,
    pub passed: bool,
    /// The measured figure, e.g. `delivery p99 73.2 ms`.
    pub detail: String,
}

/// Pass or fail, with every check.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Verdict {
    pub passed: bool,
    pub checks: Vec<Check>,
}

impl Verdict {
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(|c| !c.passed)
    }
}

/// The scenario's headline latency measure (what a bare `p99` means).
pub fn headline_measure(scenario: &str) -> &'static str {
    match scenario {
        "connect" => "handshake",
        "broadcast" | "publish" | "failover" => "delivery",
        _ => "rtt",
    }
}

/// Judges a summary: the built-in rule (most connection attempts failed: the run failed), then
/// each threshold. A mixed run is judged run by run: a threshold must hold in every run that
/// measured its metric (and at least one must have).
pub fn judge(s: &Summary, thresholds: &[Threshold]) -> Verdict {
    let mut checks = Vec::new();
    let c = &s.connections;
    let attempts = c.established + c.failed;
    if attempts > 0 && c.failed * 2 > attempts || attempts == 0 && c.target > 0 {
        let reasons: Vec<String> = c
            .failures
            .iter()
            .map(|(k, v)| format!("{k} x{v}"))
            .collect();
        checks.push(Check {
            check: "run".into(),
            passed: false,
            detail: format!(
                "{} of {} connection attempts failed{}",
                c.failed,
                attempts,
                if reasons.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", reasons.join(", "))
                }
            ),
        });
    }
    // A failover run whose disruption did not happen measured no failover.
    if let Some(fo) = s
        .failover
        .as_ref()
        .filter(|fo| !fo.disrupted && fo.disrupt != "none")
    {
        checks.push(Check {
            check: "run".into(),
            passed: false,
            detail: format!(
                "the disruption `{}` ({}) did not happen: {}",
                fo.disrupt, fo.how, fo.disrupt_result
            ),
        });
    }
    let runs: Vec<&Summary> = if s.phases.is_empty() {
        vec![s]
    } else {
        s.phases.iter().flat_map(|p| p.runs.iter()).collect()
    };
    for t in thresholds {
        let mut measured = Vec::new();
        for run in &runs {
            if let Some((what, value)) = actual(run, &t.metric) {
                measured.push((run.run_id.as_str(), what, value));
            }
        }
        if measured.is_empty() {
            checks.push(Check {
                check: t.text.clone(),
                passed: false,
                detail: "not measured by this run".into(),
            });
            continue;
        }
        let bad: Vec<_> = measured
            .iter()
            .filter(|(_, _, v)| !t.op.holds(*v, t.limit))
            .collect();
        let shown: Vec<String> = if bad.is_empty() {
            measured.iter().map(|m| describe(m, &runs)).collect()
        } else {
            bad.iter().map(|m| describe(m, &runs)).collect()
        };
        checks.push(Check {
            check: t.text.clone(),
            passed: bad.is_empty(),
            detail: shown.join("; "),
        });
    }
    Verdict {
        passed: checks.iter().all(|c| c.passed),
        checks,
    }
}

fn describe((run, what, value): &(&str, String, f64), runs: &[&Summary]) -> String {
    let figure = if what.contains(" p")
        || what.ends_with(" max")
        || what.ends_with(" mean")
        || what.ends_with(" min")
    {
        crate::summary::ms(*value)
    } else if what == "completeness" || what == "failure_rate" {
        format!("{:.4}%", value * 100.0)
    } else if value.fract() == 0.0 {
        format!("{value}")
    } else {
        format!("{value:.2}")
    };
    if runs.len() > 1 {
        format!("{what} {figure} (run {run})")
    } else {
        format!("{what} {figure}")
    }
}

/// The measured value of `metric` in one run, with a label.
fn actual(s: &Summary, metric: &Metric) -> Option<(String, f64)> {
    match metric {
        Metric::Latency { measure, stat } => {
            let name = measure
                .clone()
                .unwrap_or_else(|| headline_measure(&s.scenario).to_owned());
            let p = &s.latency.get(&name)?.percentiles;
            let v = match stat {
                Stat::Min => p.min_ms,
                Stat::Mean => p.mean_ms,
                Stat::P50 => p.p50_ms,
                Stat::P90 => p.p90_ms,
                Stat::P99 => p.p99_ms,
                Stat::P999 => p.p999_ms,
                Stat::Max => p.max_ms,
            };
            Some((format!("{name} {}", stat.label()), v))
        }
        Metric::Figure(f) => f.of(s).map(|v| (f.label().to_owned(), v)),
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let label = if c.check == "run" {
                "the run".to_owned()
            } else {
                format!("threshold `{}`", c.check)
            };
            writeln!(
                f,
                "{} {label}: {}",
                if c.passed { "PASSED" } else { "FAILED" },
                c.detail
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Threshold {
        s.parse().expect(s)
    }

    #[test]
    fn thresholds_parse_with_units_and_measures() {
        let p = t("p99 < 50ms");
        assert_eq!(p.op, Op::Lt);
        assert_eq!(p.limit, 50.0);
        assert!(matches!(
            p.metric,
            Metric::Latency {
                measure: None,
                stat: Stat::P99
            }
        ));
        assert_eq!(t("handshake.p99.9<=1.5s").limit, 1500.0);
        assert!(matches!(
            t("handshake.p99.9<=1.5s").metric,
            Metric::Latency { measure: Some(ref m), stat: Stat::P999 } if m == "handshake"
        ));
        assert_eq!(t("max<250us").limit, 0.25);
        assert!((t("completeness>=99.9%").limit - 0.999).abs() < 1e-12);
        assert_eq!(t("completeness>=1").op, Op::Ge);
        assert_eq!(t("failed==0").op, Op::Eq);
        assert!("p99".parse::<Threshold>().is_err());
        assert!("latency<5".parse::<Threshold>().is_err());
        assert!("p99<fast".parse::<Threshold>().is_err());
        assert!("errors<5%".parse::<Threshold>().is_err());
        assert!("<5".parse::<Threshold>().is_err());
    }

    #[test]
    fn ops_compare() {
        assert!(Op::Lt.holds(1.0, 2.0) && !Op::Lt.holds(2.0, 2.0));
        assert!(Op::Le.holds(2.0, 2.0) && Op::Ge.holds(2.0, 2.0));
        assert!(Op::Eq.holds(1.0, 1.0) && !Op::Gt.holds(1.0, 1.0));
    }
}
