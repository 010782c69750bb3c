#!/usr/bin/env bash
# Checks the broker's Grafana dashboard and Prometheus config/rules.
#
#   dashboards/check.sh                 promtool check config / check rules / test rules,
#                                       every alert's runbook_url vs docs/RUNBOOK.md,
#                                       dashboard JSON validation (queries select job="$job",
#                                       instance=~"$instance"), metric names vs docs/METRICS.md
#   dashboards/check.sh --list-metrics  print the metric names that the dashboard and the rules
#                                       query, one per line, sorted (histograms by base name)
#
# promtool comes from the Debian package `prometheus`; it is installed when missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
dashboard="$here/grafana/broker.json"
prom_config="$here/prometheus/prometheus.yml"
rules="$here/prometheus/rules.yml"
rules_test="$here/prometheus/rules_test.yml"
metrics_doc="$here/../docs/METRICS.md"
runbook="$here/../docs/RUNBOOK.md"

# Prints the metric names used by the PromQL expressions of the dashboard (targets' expr,
# template variables' query/definition) and of the rules (expr). Only names matching
# broker_[a-z_]+ or process_[a-z_]+; _bucket/_sum/_count are stripped to the histogram name.
list_metrics() {
    python3 - "$dashboard" "$rules" <<'PY'
import json, re, sys

dashboard_path, rules_path = sys.argv[1], sys.argv[2]
NAME = re.compile(r"(?<![A-Za-z0-9_:])((?:broker|process)_[a-z_]+)")
SUFFIX = re.compile(r"_(bucket|sum|count)$")

exprs = []

def walk(node):
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "query", "definition") and isinstance(value, str):
                exprs.append(value)
            else:
                walk(value)
    elif isinstance(node, list):
        for item in node:
            walk(item)

with open(dashboard_path) as f:
    walk(json.load(f))

def rule_exprs_fallback(text):
    """expr: values of a YAML file without PyYAML: inline scalars and | / > blocks."""
    out = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2).strip()
        if value[:1] in ("|", ">"):
            block = []
            while i < len(lines) and (not lines[i].strip() or
                                      len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i])
                i += 1
            out.append("\n".join(block))
        else:
            if value[:1] in ("'", '"'):
                value = value[1:-1]
            out.append(value)
    return out

with open(rules_path) as f:
    text = f.read()
try:
    import yaml
    for group in yaml.safe_load(text)["groups"]:
        for rule in group["rules"]:
            exprs.append(str(rule["expr"]))
except ImportError:
    exprs.extend(rule_exprs_fallback(text))

names = set()
for expr in exprs:
    for name in NAME.findall(expr):
        names.add(SUFFIX.sub("", name))
for name in sorted(names):
    print(name)
PY
}

# Every alert of rules.yml has annotations.runbook_url = <runbook URL>#<anchor>, where the
# anchor is the alert's name in lower case and a heading of docs/RUNBOOK.md (GitHub's anchor
# for it); every alert uses the same <runbook URL>, and so does the dashboard's "Runbook" link;
# every "## Broker..." section of the runbook is an alert that exists.
check_runbooks() {
    python3 - "$rules" "$runbook" "$dashboard" <<'PY'
import json, re, sys

rules_path, runbook_path, dashboard_path = sys.argv[1:4]
PLACEHOLDER = "https://example.com/broker/blob/main/docs/RUNBOOK.md"

def unquote(v):
    v = v.strip()
    if v[:1] in ("'", '"') and v[-1:] == v[:1]:
        v = v[1:-1]
    return v

def alerts_fallback(text):
    """(alert name, runbook_url or None) from rules.yml without PyYAML."""
    out, current = [], None
    for line in text.splitlines():
        m = re.match(r"^\s*-\s+(alert|record|name):\s*(.*)$", line)
        if m:
            if current:
                out.append(tuple(current))
            current = [unquote(m.group(2)), None] if m.group(1) == "alert" else None
            continue
        m = re.match(r"^\s+runbook_url:\s*(.*)$", line)
        if m and current is not None:
            current[1] = unquote(m.group(1))
    if current:
        out.append(tuple(current))
    return out

with open(rules_path) as f:
    text = f.read()
try:
    import yaml
    alerts = [(r["alert"], (r.get("annotations") or {}).get("runbook_url"))
              for g in yaml.safe_load(text)["groups"] for r in g["rules"] if "alert" in r]
except ImportError:
    alerts = alerts_fallback(text)

def slug(heading):
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    h = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return h.replace(" ", "-")

anchors, sections, fence = set(), set(), False
with open(runbook_path) as f:
    for line in f:
        if re.match(r"^\s*(```|~~~)", line):
            fence = not fence
            continue
        m = None if fence else re.match(r"^(#{1,6})\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base, n = slug(m.group(2)), 1
        a = base
        while a in anchors:
            a, n = "%s-%d" % (base, n), n + 1
        anchors.add(a)
        if len(m.group(1)) == 2 and re.fullmatch(r"Broker[A-Za-z0-9]+", m.group(2)):
            sections.add(m.group(2))

errors, docs = [], set()
if not alerts:
    errors.append("no alerts found in %s" % rules_path)
for name, url in alerts:
    if not url:
        errors.append("%s: no annotations.runbook_url" % name)
        continue
    doc, sep, anchor = url.partition("#")
    if not re.match(r"^https?://[^\s#]+$", doc) or not sep:
        errors.append("%s: runbook_url %r is not an http(s) URL with a #anchor" % (name, url))
        continue
    docs.add(doc)
    if anchor not in anchors:
        errors.append("%s: runbook_url anchor #%s is not a heading of docs/RUNBOOK.md" % (name, anchor))
    elif anchor != slug(name):
        errors.append("%s: runbook_url points at #%s, not at its own section #%s" % (name, anchor, slug(name)))
if len(docs) > 1:
    errors.append("the alerts' runbook_url use different documents: %s" % ", ".join(sorted(docs)))
for section in sorted(sections - {name for name, _ in alerts}):
    errors.append("docs/RUNBOOK.md has a section %r but rules.yml has no such alert" % section)
with open(dashboard_path) as f:
    for link in json.load(f).get("links", []):
        if link.get("title") == "Runbook" and docs and link.get("url") not in docs:
            errors.append("dashboard link 'Runbook' is %r, the alerts use %s" % (link.get("url"), ", ".join(sorted(docs))))
for e in errors:
    print("runbook:", e, file=sys.stderr)
if errors:
    sys.exit(1)
print("  SUCCESS: %d alerts, each with a runbook_url to its section of docs/RUNBOOK.md" % len(alerts))
if docs == {PLACEHOLDER}:
    print("  note: runbook_url is still the placeholder %s;" % PLACEHOLDER)
    print("        point it at your copy: dashboards/set-runbook-base.sh URL")
PY
}

if [[ "${1:-}" == "--list-metrics" ]]; then
    list_metrics
    exit 0
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--list-metrics]" >&2
    exit 2
fi

if ! command -v promtool >/dev/null 2>&1; then
    echo "== promtool missing: installing the Debian package prometheus"
    sudo=""
    if [[ "$(id -u)" -ne 0 ]]; then sudo="sudo"; fi
    $sudo apt-get update
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y --no-install-recommends prometheus
fi

echo "== promtool check config"
promtool check config "$prom_config"
echo "== promtool check rules"
promtool check rules "$rules"
echo "== alerts: runbook_url vs docs/RUNBOOK.md"
check_runbooks
echo "== promtool test rules"
promtool test rules "$rules_test"

echo "== dashboard JSON"
python3 -m json.tool "$dashboard" >/dev/null
python3 - "$dashboard" <<'PY'
import json, re, sys

path = sys.argv[1]
with open(path) as f:
    text = f.read()
d = json.loads(text)
errors = []
if "DS_PROMETHEUS" in text:
    errors.append("uses ${DS_PROMETHEUS}; use the datasource variable")
if d.get("schemaVersion", 0) < 36:
    errors.append("schemaVersion %r is too old" % d.get("schemaVersion"))
variables = {v["name"]: v for v in d["templating"]["list"]}
if variables.get("datasource", {}).get("type") != "datasource":
    errors.append("no datasource template variable")

def var_query(v):
    q = v.get("query")
    return q.get("query", "") if isinstance(q, dict) else (q or "")

# The job and the instances are chosen at the top, never written into a query.
job = variables.get("job")
if job is None:
    errors.append("no job template variable")
else:
    if job.get("type") not in ("query", "custom", "textbox", "constant"):
        errors.append("job variable: type %r (want query, custom, textbox or constant)" % job.get("type"))
    if job.get("multi") or job.get("includeAll"):
        errors.append("job variable: must be single-valued (queries use job=\"$job\")")
    if not (job.get("current") or {}).get("value"):
        errors.append("job variable: no default value (current)")
inst = variables.get("instance")
if inst is None:
    errors.append("no instance template variable")
elif 'job="$job"' not in var_query(inst) or 'job="$job"' not in inst.get("definition", var_query(inst)):
    errors.append('instance variable: its query must select job="$job": %r' % var_query(inst))

# Every selector of a broker metric, a process metric or up: job="$job" and
# instance=~"$instance" (an expression: instance=~"$instance" without a job is as wrong as a
# hard-coded job). Any other job matcher anywhere (job="broker", job=~"...") fails.
SELECTOR = re.compile(r'(?<![A-Za-z0-9_:$])(up|(?:broker|process)_[a-z_]+)\s*(\{[^}]*\})?')
JOB = re.compile(r'\bjob\s*(=~|!=|!~|=)\s*"([^"]*)"')
def check_expr(where, expr, selectors=True):
    for op, value in JOB.findall(expr):
        if (op, value) != ("=", "$job"):
            errors.append('%s: hard-coded job (job%s"%s"; use job="$job"): %s' % (where, op, value, expr))
    if not selectors:
        return
    for m in SELECTOR.finditer(expr):
        matchers = {x.strip() for x in (m.group(2) or "{}")[1:-1].split(",")}
        for want in ('job="$job"', 'instance=~"$instance"'):
            if want not in matchers:
                errors.append("%s: %s without %s: %s" % (where, m.group(1), want, expr))

for v in d["templating"]["list"]:
    if v.get("type") == "query":
        check_expr("variable %r" % v["name"], var_query(v), selectors=False)
        check_expr("variable %r" % v["name"], v.get("definition", ""), selectors=False)

ids = set()
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
for p in panels(d["panels"]):
    if p["id"] in ids:
        errors.append("duplicate panel id %r" % p["id"])
    ids.add(p["id"])
    if p["type"] == "row":
        continue
    if p.get("datasource", {}).get("uid") != "${datasource}":
        errors.append("panel %r: datasource is not ${datasource}" % p["title"])
    if not p.get("targets"):
        errors.append("panel %r has no queries" % p["title"])
    for t in p.get("targets", []):
        if t.get("datasource", {}).get("uid") != "${datasource}":
            errors.append("panel %r: query datasource is not ${datasource}" % p["title"])
        expr = t.get("expr", "")
        if "rate(" in expr and "[$__rate_interval]" not in expr and "[$__range]" not in expr:
            errors.append("panel %r: rate/increase without $__rate_interval: %s" % (p["title"], expr))
        check_expr("panel %r" % p["title"], expr)
for e in errors:
    print("dashboard:", e, file=sys.stderr)
if errors:
    sys.exit(1)
print("  SUCCESS: %s (%d panels)" % (path, len(ids)))
PY

echo "== dashboard PromQL syntax (as recording rules, variables substituted)"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
python3 - "$dashboard" >"$tmp/dashboard_exprs.yml" <<'PY'
import json, sys
with open(sys.argv[1]) as f:
    d = json.load(f)
def panels(ps):
    for p in ps:
        yield p
        yield from panels(p.get("panels", []))
print("groups:\n  - name: dashboard\n    rules:")
n = 0
for p in panels(d["panels"]):
    for t in p.get("targets", []):
        expr = (t["expr"].replace("$__rate_interval", "1m").replace("$__range", "1h")
                .replace("$instance", ".*").replace("$job", "broker"))
        n += 1
        print("      - record: dashboard:expr_%d" % n)
        print("        expr: %s" % json.dumps(expr))
PY
promtool check rules "$tmp/dashboard_exprs.yml"

echo "== metric names vs docs/METRICS.md"
used="$(list_metrics)"
if [[ -f "$metrics_doc" ]]; then
    missing=0
    while IFS= read -r name; do
        if ! grep -q -- "\`$name\`" "$metrics_doc"; then
            echo "  not in docs/METRICS.md: $name" >&2
            missing=1
        fi
    done <<<"$used"
    if [[ "$missing" -ne 0 ]]; then exit 1; fi
    echo "  SUCCESS: $(wc -l <<<"$used") metric names, all documented"
else
    echo "  skipped: $metrics_doc not found"
fi
echo "== all checks passed"
