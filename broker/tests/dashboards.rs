//! Every metric that the Grafana dashboard or the Prometheus rules use is exported.

mod common;
use std::collections::BTreeSet;

/// Metric names in PromQL text: `broker_...` and `process_...`, histogram series folded into
/// the histogram's name.
fn names_in(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut out = BTreeSet::new();
    for prefix in ["broker_", "process_"] {
        for (start, _) in text.match_indices(prefix) {
            let before = start.checked_sub(1).map(|i| bytes[i]);
            if before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
                continue;
            }
            let end = text[start..]
                .find(|c: char| !(c.is_ascii_lowercase() || c == '_'))
                .map_or(text.len(), |n| start + n);
            let mut name = &text[start..end];
            for suffix in ["_bucket", "_sum", "_count"] {
                name = name.strip_suffix(suffix).unwrap_or(name);
            }
            out.insert(name.to_string());
        }
    }
    out
}

#[tokio::test]
async fn dashboard_and_rules_use_only_exported_metrics() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../dashboards");
    let mut used = BTreeSet::new();
    for file in ["grafana/broker.json", "prometheus/rules.yml"] {
        let text = std::fs::read_to_string(format!("{root}/{file}")).expect("dashboard file");
        used.extend(names_in(&text));
    }
    assert!(used.len() > 15, "found too few metric names: {used:?}");

    let b = common::start().await;
    let (_, text) = common::http_get(b.ops_addr(), "/metrics", None).await;
    let exported: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect();
    let missing: Vec<_> = used.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "used by the dashboards but not exported: {missing:?}"
    );
    b.shutdown().await;
}
