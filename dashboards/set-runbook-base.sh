#!/usr/bin/env bash
# Points every alert's runbook_url (and the dashboard's "Runbook" link) at your copy of
# docs/RUNBOOK.md.
#
#   dashboards/set-runbook-base.sh URL   URL: where your operators open docs/RUNBOOK.md, e.g.
#                                          https://github.com/acme/broker/blob/main/docs/RUNBOOK.md
#   dashboards/set-runbook-base.sh       print the URL in use
#
# Prometheus rule files cannot template a base URL, so each alert carries the full URL
# <URL>#<alert name in lower case>. This rewrites the <URL> part in place in
# prometheus/rules.yml, prometheus/rules_test.yml (the unit tests compare annotations) and
# grafana/broker.json, keeping the anchors. Run dashboards/check.sh afterwards.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

python3 - "$here" "$@" <<'PY'
import json, re, sys

here, args = sys.argv[1], sys.argv[2:]
files = [here + "/prometheus/rules.yml", here + "/prometheus/rules_test.yml",
         here + "/grafana/broker.json"]
URL_LINE = re.compile(r'^(\s*runbook_url:\s*)(["\']?)([^#"\'\s]+)#', re.M)

texts = {}
for path in files:
    with open(path) as f:
        texts[path] = f.read()
current = {m.group(3) for path in files[:2] for m in URL_LINE.finditer(texts[path])}
if len(current) != 1:
    sys.exit("set-runbook-base: expected one runbook URL in the rules, found %s" % (sorted(current) or "none"))
old = current.pop()

if not args:
    print(old)
    sys.exit(0)
if len(args) != 1 or args[0].startswith("-"):
    sys.exit("usage: dashboards/set-runbook-base.sh URL   (the URL of docs/RUNBOOK.md, no #anchor)")
new = args[0].rstrip("#")
if not re.fullmatch(r"https?://[^\s#\"'\\]+", new):
    sys.exit("set-runbook-base: %r is not an http(s) URL without #, quotes, backslashes or spaces" % new)
if new == old:
    print("runbook URL already %s" % new)
    sys.exit(0)

counts = {}
for path in files[:2]:
    texts[path], counts[path] = URL_LINE.subn(
        lambda m: m.group(1) + m.group(2) + new + "#", texts[path])
dashboard = json.loads(texts[files[2]])
links = [l for l in dashboard.get("links", []) if l.get("title") == "Runbook"]
for link in links:
    link["url"] = new
texts[files[2]] = json.dumps(dashboard, indent=2) + "\n"
counts[files[2]] = len(links)
for path in files:
    with open(path, "w") as f:
        f.write(texts[path])
    print("%s: %d URL(s)" % (path, counts[path]))
print("runbook URL: %s -> %s" % (old, new))
if not new.endswith("RUNBOOK.md"):
    print("note: the anchors (#brokerinstancedown, ...) must exist on that page")
print("now run dashboards/check.sh")
PY
