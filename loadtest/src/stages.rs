//! Stages: ramp up, hold, ramp down. `--stage 30s:1000 --stage 1m:1000 --stage 10s:0` goes
//! from 0 to 1000 in 30 s, holds a minute, and back to 0 in 10 s, linearly within each stage.
//!
//! For `connect` the level is open connections: connection `n` opens when the level first
//! reaches `n + 1` and closes when it next falls below (the last opened closes first). For
//! `broadcast` and `publish` it is the send rate in events per second: event `k` is due when
//! the integral of the rate reaches `k`, so the open-loop schedule (and the latency measured
//! from it) follows the ramp exactly.

use std::str::FromStr;
use std::time::Duration;

use crate::cli::parse_duration;

/// One stage: reach `target` linearly over `duration`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stage {
    pub duration: Duration,
    pub target: f64,
}

impl FromStr for Stage {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let Some((d, t)) = s.rsplit_once(':') else {
            return Err(format!(
                "`{s}` is not a stage: write DURATION:TARGET, e.g. 30s:1000"
            ));
        };
        let duration = parse_duration(d)?;
        let target = match t.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => v,
            _ => {
                return Err(format!(
                    "`{s}`: the target `{t}` is not a number of 0 or more"
                ))
            }
        };
        Ok(Stage { duration, target })
    }
}

/// A list of stages starting from level 0.
#[derive(Debug, Clone, PartialEq)]
pub struct Stages(pub Vec<Stage>);

impl Stages {
    pub fn total(&self) -> Duration {
        self.0.iter().map(|s| s.duration).sum()
    }

    pub fn peak(&self) -> f64 {
        self.0.iter().map(|s| s.target).fold(0.0, f64::max)
    }

    /// Segments as (start s, length s, from, to).
    fn segments(&self) -> impl Iterator<Item = (f64, f64, f64, f64)> + '_ {
        let mut at = 0.0;
        let mut level = 0.0;
        self.0.iter().map(move |s| {
            let seg = (at, s.duration.as_secs_f64(), level, s.target);
            at += s.duration.as_secs_f64();
            level = s.target;
            seg
        })
    }

    /// When connection `n` opens and closes (offsets from the start); `None` if the level never
    /// reaches `n + 1`. Without a fall below it, it closes at the end of the last stage.
    pub fn window(&self, n: usize) -> Option<(Duration, Duration)> {
        let want = n as f64 + 1.0;
        let mut open = None;
        for (at, len, from, to) in self.segments() {
            match open {
                None if to >= want && from < want => {
                    let f = if to > from {
                        (want - from) / (to - from)
                    } else {
                        0.0
                    };
                    open = Some(at + len * f);
                }
                None if from >= want => open = Some(at),
                Some(o) if to < want && from >= want => {
                    let f = (from - want) / (from - to);
                    let close = (at + len * f).max(o);
                    return Some((secs(o), secs(close)));
                }
                _ => {}
            }
        }
        open.map(|o| (secs(o), self.total()))
    }

    /// When event `k` (0-based) is due, as an offset from the start, for the level as a rate
    /// in events per second; `None` when the stages end first.
    pub fn due(&self, k: u64) -> Option<Duration> {
        let k = k as f64;
        let mut before = 0.0; // events due before this segment
        for (at, len, a, b) in self.segments() {
            let area = (a + b) / 2.0 * len;
            if k < before + area && len > 0.0 {
                let x = k - before;
                // Solve a·τ + (b − a)/(2·len)·τ² = x for τ in [0, len].
                let slope = (b - a) / len;
                let tau = if slope.abs() < 1e-12 {
                    x / a
                } else {
                    (-a + (a * a + 2.0 * slope * x).max(0.0).sqrt()) / slope
                };
                return Some(secs(at + tau.clamp(0.0, len)));
            }
            before += area;
        }
        None
    }

    /// Events due over all stages (the integral of the rate).
    pub fn events(&self) -> u64 {
        self.segments()
            .map(|(_, len, a, b)| (a + b) / 2.0 * len)
            .sum::<f64>()
            .ceil() as u64
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stages(list: &[&str]) -> Stages {
        Stages(list.iter().map(|s| s.parse().expect(s)).collect())
    }

    #[test]
    fn stages_parse() {
        assert_eq!(
            "30s:1000".parse::<Stage>(),
            Ok(Stage {
                duration: Duration::from_secs(30),
                target: 1000.0
            })
        );
        assert!("30s".parse::<Stage>().is_err());
        assert!("30s:-1".parse::<Stage>().is_err());
        assert!("soon:5".parse::<Stage>().is_err());
    }

    #[test]
    fn connections_open_on_the_way_up_and_close_last_first_on_the_way_down() {
        let s = stages(&["10s:10", "10s:10", "5s:0"]);
        assert_eq!(s.peak(), 10.0);
        assert_eq!(s.total(), Duration::from_secs(25));
        let (open0, close0) = s.window(0).expect("reached");
        let (open9, close9) = s.window(9).expect("reached");
        assert_eq!(open0, Duration::from_secs(1));
        assert_eq!(open9, Duration::from_secs(10));
        assert!(close9 < close0, "the last opened closes first");
        assert_eq!(close0, Duration::from_millis(24_500));
        assert!(s.window(10).is_none());
        let hold = stages(&["2s:4"]);
        assert_eq!(hold.window(3).map(|w| w.1), Some(Duration::from_secs(2)));
    }

    #[test]
    fn events_follow_the_rate_ramp() {
        // 0 → 100/s over 10 s (500 events), then 100/s for 5 s (500 more).
        let s = stages(&["10s:100", "5s:100"]);
        assert_eq!(s.events(), 1000);
        let t = |k| s.due(k).expect("due").as_secs_f64();
        assert!((t(500) - 10.0).abs() < 1e-6, "{}", t(500));
        assert!((t(750) - 12.5).abs() < 1e-6, "{}", t(750));
        // Half the first ramp's events are due after 1/√2 of it.
        assert!((t(250) - 10.0 / 2f64.sqrt()).abs() < 1e-6, "{}", t(250));
        assert!(s.due(1000).is_none());
        let mut last = 0.0;
        for k in 0..1000 {
            assert!(t(k) >= last);
            last = t(k);
        }
    }
}
