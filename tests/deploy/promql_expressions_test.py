#!/usr/bin/python3
"""Tests of deploy/tools/promql-expressions and of what it reads (deploy/grafana/kpulse.json and
deploy/prometheus/kpulse-*.yml). No root, no network: promtool parses the expressions.

    /usr/bin/python3 tests/deploy/promql_expressions_test.py [-v]
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import unittest

import yaml

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
TOOL = os.path.join(REPO, "deploy", "tools", "promql-expressions")
DASHBOARD = os.path.join(REPO, "deploy", "grafana", "kpulse.json")
PROMETHEUS_DIR = os.path.join(REPO, "deploy", "prometheus")
RECORDING_RULES = os.path.join(PROMETHEUS_DIR, "kpulse-rules.yml")
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"

CGROUP_VARIABLES = ("instance", "unit", "cgroup", "pod_uid")
GRAFANA_BUILTINS = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                    "__range_ms", "__all", "__from", "__to", "__dashboard", "__org", "__user"}


def run_tool(*args, check=True):
    result = subprocess.run([TOOL, *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"promql-expressions {' '.join(args)} failed "
                             f"({result.returncode}): {result.stderr}")
    records = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result, records


def promtool_check(exprs, directory):
    """Run `promtool check rules` on the expressions as recording rules: (rc, output)."""
    path = os.path.join(directory, "parse-check.yml")
    rules = [{"record": f"kpulse_parse_check_{i}", "expr": e} for i, e in enumerate(exprs)]
    with open(path, "w") as f:
        yaml.safe_dump({"groups": [{"name": "parse-check", "rules": rules}]}, f, width=10000)
    result = subprocess.run([PROMTOOL, "check", "rules", path], capture_output=True, text=True)
    return result.returncode, result.stdout + result.stderr


def load_dashboard():
    with open(DASHBOARD) as f:
        return json.load(f)


def all_panels(container):
    for panel in container.get("panels", []) or []:
        yield panel
        yield from all_panels(panel)


def per_cgroup_families():
    """Metric families with the cgroup label set, read from the tables of docs/metrics.md."""
    families = set()
    with open(os.path.join(REPO, "docs", "metrics.md")) as f:
        for line in f:
            cells = [c.strip() for c in line.split("|")]
            if len(cells) < 5 or not cells[1].startswith("`kpulse_"):
                continue
            name, kind, labels = cells[1].strip("`"), cells[2], cells[3]
            if "`cgroup`" not in labels:
                continue
            if kind == "histogram":
                families.update(name + s for s in ("_bucket", "_sum", "_count"))
            else:
                families.add(name)
    return families


def selectors(expr):
    """(metric name, matcher text) of every vector selector of a PromQL expression: a rough
    tokenizer that skips strings, numbers, durations, function calls and grouping clauses."""
    found, i = [], 0
    while i < len(expr):
        c = expr[i]
        if c == '"' or c == "'" or c == "`":
            j = i + 1
            while j < len(expr) and expr[j] != c:
                j += 2 if expr[j] == "\\" else 1
            i = j + 1
        elif c == "$":
            i += 1
            while i < len(expr) and (expr[i].isalnum() or expr[i] == "_"):
                i += 1
        elif c.isdigit() or (c == "." and i + 1 < len(expr) and expr[i + 1].isdigit()):
            while i < len(expr) and (expr[i].isalnum() or expr[i] in "._"):
                i += 1
        elif c.isalpha() or c in "_:":
            j = i
            while j < len(expr) and (expr[j].isalnum() or expr[j] in "_:"):
                j += 1
            name = expr[i:j]
            k = j
            while k < len(expr) and expr[k].isspace():
                k += 1
            if k < len(expr) and expr[k] == "(":
                i = k  # a function call or a by/on/without(...) list: its content is scanned on
                continue
            if k < len(expr) and expr[k] == "{":
                m, depth = k, 0
                while m < len(expr):
                    if expr[m] == '"':
                        m += 1
                        while expr[m] != '"':
                            m += 2 if expr[m] == "\\" else 1
                    elif expr[m] == "{":
                        depth += 1
                    elif expr[m] == "}":
                        depth -= 1
                        if depth == 0:
                            break
                    m += 1
                found.append((name, expr[k + 1:m]))
                i = m + 1
                continue
            if name.startswith(("kpulse_", "kube_")) or ":" in name or name == "ALERTS":
                found.append((name, ""))
            i = j
        else:
            i += 1
    return found


class ExpressionsParse(unittest.TestCase):
    """(a) Every expression the tool prints parses: promtool check rules, the real PromQL parser."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="kpulse-promql-")

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def test_every_expression_parses(self):
        _, records = run_tool("--substitute", "--interval", "1m")
        dashboard_targets = sum(1 for p in all_panels(load_dashboard())
                                for t in p.get("targets", []) if t.get("expr"))
        self.assertGreaterEqual(sum(r["kind"] == "panel" for r in records), dashboard_targets)
        self.assertGreater(sum(r["source"].startswith("deploy/prometheus/") for r in records), 0)
        rc, output = promtool_check([r["expr"] for r in records], self.tmp)
        if rc != 0:
            bad = [records[int(n) - 1]["name"] for n in re.findall(r"rule (\d+),", output)]
            self.fail(f"promtool rejects {bad}:\n{output}")
        self.assertIn(f"SUCCESS: {len(records)} rules found", output)

    def test_promtool_rejects_a_broken_expression(self):
        # The harness itself: a broken expression among good ones is reported as that rule.
        rc, output = promtool_check(["up", "sum(rate(up[5m])", "up == 0"], self.tmp)
        self.assertNotEqual(rc, 0)
        self.assertRegex(output, r"rule 2, \"kpulse_parse_check_1\": could not parse")

    def test_substitution_leaves_only_promql(self):
        _, raw = run_tool()
        _, substituted = run_tool("--substitute", "--interval", "30s")
        self.assertEqual([r["name"] for r in raw], [r["name"] for r in substituted])
        self.assertTrue(any("$__rate_interval" in r["expr"] for r in raw))
        for r in substituted:
            self.assertNotRegex(r["expr"], r"\$\{?[A-Za-z_]|\[\[", r["name"])
        by_name = {r["name"]: r["expr"] for r in substituted}
        self.assertIn('instance=~".*"', by_name["panel/1/A"])
        self.assertIn("[30s]", by_name["panel/1/A"])
        self.assertIn('"$1"', by_name["panel/10/A"])  # label_replace's back-reference stays

    def test_substitution_forms_and_unknown_variable(self):
        dashboard = {"templating": {"list": [{"type": "custom", "name": "node"}]},
                     "panels": [{"id": 1, "targets": [
                         {"refId": "A", "expr": 'rate(x{a=~"$node", b=~"${node:regex}", '
                                                'c=~"[[node]]"}[$__rate_interval]) '
                                                '* $__range_s + $__interval_ms'}]}]}
        path = os.path.join(self.tmp, "d.json")
        with open(path, "w") as f:
            json.dump(dashboard, f)
        _, records = run_tool("--substitute", "--interval", "2m", path)
        self.assertEqual(records[0]["expr"],
                         'rate(x{a=~".*", b=~".*", c=~".*"}[2m]) * 120 + 120000')
        dashboard["panels"][0]["targets"][0]["expr"] = 'x{a=~"$nosuch"}'
        with open(path, "w") as f:
            json.dump(dashboard, f)
        result, _ = run_tool("--substitute", path, check=False)
        self.assertEqual(result.returncode, 2)
        self.assertIn("$nosuch", result.stderr)

    def test_variables_annotations_and_collapsed_rows(self):
        dashboard = {"templating": {"list": [
            {"type": "query", "name": "a", "query": 'label_values(m{x="1,2"}, instance)'},
            {"type": "query", "name": "b", "query": {"query": "label_values(job)"}},
            {"type": "query", "name": "c", "query": {"query": "query_result(topk(3, up))"}},
            {"type": "query", "name": "d", "query": "label_names()"},
            {"type": "datasource", "name": "ds", "query": "prometheus"}]},
            "annotations": {"list": [{"name": "old", "expr": "changes(x[5m]) > 0"},
                                     {"name": "new", "target": {"expr": "y", "refId": "Anno"}},
                                     {"name": "builtin", "builtIn": 1}]},
            "panels": [{"type": "row", "id": 9, "collapsed": True, "panels": [
                {"id": 10, "title": "inner", "targets": [{"refId": "Z", "expr": "up"}]}]}]}
        path = os.path.join(self.tmp, "d.json")
        with open(path, "w") as f:
            json.dump(dashboard, f)
        _, records = run_tool("--panel-title", path)
        self.assertEqual([(r["name"], r["expr"]) for r in records],
                         [("panel/10/Z", "up"), ("annotation/old", "changes(x[5m]) > 0"),
                          ("annotation/new", "y"), ("variable/a", 'm{x="1,2"}'),
                          ("variable/c", "topk(3, up)")])
        self.assertEqual(records[0]["panel_title"], "inner")


def template_query_count(rule_file):
    """An independent count of `query` calls in the templates of a rule file's labels and
    annotations: the word `query` inside {{ }} actions."""
    with open(rule_file) as f:
        document = yaml.safe_load(f)
    if not isinstance(document, dict) or "groups" not in document:
        return None
    count = 0
    for group in document["groups"] or []:
        for rule in group.get("rules") or []:
            for section in ("labels", "annotations"):
                for value in (rule.get(section) or {}).values():
                    for action in re.findall(r"\{\{(.*?)\}\}", str(value), re.S):
                        count += len(re.findall(r"(?<![\w.$])query\b", action))
    return count


class TemplateQueries(unittest.TestCase):
    """(c) The tool finds the PromQL that rule annotation templates pass to `query`."""

    FIXTURE = textwrap.dedent(r'''
        groups:
          - name: fixture
            rules:
              - record: job:up:sum
                expr: sum by (job) (up)
              - alert: FixtureAlert
                expr: job:up:sum == 0
                labels:
                  severity: warning
                annotations:
                  description: |
                    {{ range query `topk(3, sum by (raddr) (rate(kpulse_tcp_flow_retransmits_total{kind="syn"}[5m])))` }}{{ .Labels.raddr }} {{ end }}
                    {{- with query "sum(up{job=\"kpulse\"})" }}{{ . | first | value }}{{ end }}
                  summary: '{{ with printf `kpulse_probe_up{instance=%q}` $labels.instance | query }}{{ . | first | value }}{{ end }}'
                  other: '{{ $x := query (printf "up{instance=\"%s\"} > %d" .Labels.instance 0) }}{{ $labels.job }}'
        ''')

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="kpulse-promql-")
        self.fixture = os.path.join(self.tmp, "kpulse-fixture.yml")
        with open(self.fixture, "w") as f:
            f.write(self.FIXTURE)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def test_every_query_form_is_extracted(self):
        _, records = run_tool("--label", "instance=node1:10136", self.fixture)
        self.assertEqual(
            [(r["name"], r["expr"]) for r in records],
            [("record/job:up:sum", "sum by (job) (up)"),
             ("alert/FixtureAlert", "job:up:sum == 0"),
             ("alert/FixtureAlert/annotations/description/query/1",
              'topk(3, sum by (raddr) (rate(kpulse_tcp_flow_retransmits_total{kind="syn"}[5m])))'),
             ("alert/FixtureAlert/annotations/description/query/2", 'sum(up{job="kpulse"})'),
             ("alert/FixtureAlert/annotations/summary/query/1",
              'kpulse_probe_up{instance="node1:10136"}'),
             ("alert/FixtureAlert/annotations/other/query/1", 'up{instance="node1:10136"} > 0')])
        self.assertEqual([r.get("printf", False) for r in records],
                         [False, False, False, False, True, True])
        self.assertEqual(sum(r["kind"] == "template_query" for r in records),
                         template_query_count(self.fixture))

    def test_query_of_an_unknown_value_is_an_error(self):
        with open(self.fixture, "a") as f:
            f.write("          broken: '{{ $labels.q | query }}'\n")
        result, _ = run_tool(self.fixture, check=False)
        self.assertEqual(result.returncode, 2)
        self.assertIn("broken", result.stderr)

    def test_counts_match_the_shipped_rule_files(self):
        _, records = run_tool("--rules-only")
        files = sorted(f for f in os.listdir(PROMETHEUS_DIR)
                       if f.startswith("kpulse-") and f.endswith(".yml"))
        checked = 0
        for name in files:
            expected = template_query_count(os.path.join(PROMETHEUS_DIR, name))
            source = f"deploy/prometheus/{name}"
            found = [r for r in records if r["source"] == source]
            if expected is None:  # not a rule file (the promtool test file)
                self.assertEqual(found, [], source)
                continue
            checked += 1
            self.assertEqual(sum(r["kind"] == "template_query" for r in found), expected, source)
            with open(os.path.join(PROMETHEUS_DIR, name)) as f:
                rules = [r for g in yaml.safe_load(f)["groups"] for r in g["rules"]]
            self.assertEqual(sum(r["kind"] in ("record", "alert") for r in found), len(rules),
                             source)
        self.assertGreater(checked, 0)


class Dashboard(unittest.TestCase):
    """(b) The dashboard's structure: variables, datasource, ids, required panels, filters."""

    ALLOWED_TYPES = {"row", "timeseries", "heatmap", "table", "stat"}

    @classmethod
    def setUpClass(cls):
        cls.dashboard = load_dashboard()
        cls.panels = list(all_panels(cls.dashboard))
        cls.by_id = {p.get("id"): p for p in cls.panels}
        _, cls.records = run_tool("--dashboard-only")

    def exprs(self, panel_id):
        return [t["expr"] for t in self.by_id[panel_id].get("targets", [])]

    def test_schema_version(self):
        self.assertIn(self.dashboard.get("schemaVersion"), (38, 39))
        self.assertTrue(self.dashboard.get("uid"))

    def test_template_variables(self):
        variables = {v["name"]: v for v in self.dashboard["templating"]["list"]}
        datasource = variables["datasource"]
        self.assertEqual((datasource["type"], datasource["query"]), ("datasource", "prometheus"))
        for name in CGROUP_VARIABLES:
            v = variables[name]
            self.assertEqual(v["type"], "query", name)
            self.assertTrue(v["multi"] and v["includeAll"], name)
            self.assertEqual(v["allValue"], ".*", name)
            query = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            self.assertRegex(query, r"^label_values\(.+, " + name + r"\)$", name)
            self.assertEqual(v["datasource"]["uid"], "${datasource}", name)

    def test_every_panel_uses_the_datasource_variable(self):
        for p in self.panels:
            if p["type"] == "row":
                continue
            self.assertEqual(p.get("datasource"), {"type": "prometheus", "uid": "${datasource}"},
                             p.get("title"))
            self.assertTrue(p.get("targets"), p.get("title"))
            for t in p["targets"]:
                self.assertEqual(t.get("datasource"),
                                 {"type": "prometheus", "uid": "${datasource}"}, p.get("title"))

    def test_ids_types_descriptions(self):
        ids = [p.get("id") for p in self.panels]
        self.assertTrue(all(isinstance(i, int) for i in ids), ids)
        self.assertEqual(len(ids), len(set(ids)), f"duplicate panel ids: {sorted(ids)}")
        for p in self.panels:
            self.assertIn(p["type"], self.ALLOWED_TYPES, p.get("title"))
            if p["type"] != "row":
                self.assertGreater(len(p.get("description", "")), 20, p.get("title"))
                refs = [t["refId"] for t in p["targets"]]
                self.assertEqual(len(refs), len(set(refs)), p.get("title"))

    def test_required_panels(self):
        required = {
            1: ("timeseries", r"(?i)retransmits by kind",
                [r"kpulse_tcp_retransmits_total\{", r"by \([^)]*\bkind\b"]),
            3: ("timeseries", r"(?i)remote endpoints",
                [r"^topk\(", r"by \(raddr, rport\)",
                 r"instance_raddr_rport:kpulse_tcp_syn_retransmits:rate5m\{"]),
            4: ("timeseries", r"(?i)cgroups by SYN",
                [r"^topk\(", r'kpulse_tcp_cgroup_retransmits_total\{kind="syn"', r"cgroup\)"]),
            5: ("heatmap", r"(?i)run-queue latency heatmap",
                [r"^sum by \(le\) \(rate\(kpulse_(node_)?runqueue_latency_seconds_bucket\{"]),
            6: ("timeseries", r"(?i)p99",
                [r"instance_cgroup:kpulse_runqueue_latency_seconds:p99_5m\{"]),
            7: ("timeseries", r"(?i)p50",
                [r"instance_cgroup:kpulse_runqueue_latency_seconds:p50_5m\{"]),
            8: ("timeseries", r"(?i)off-cpu.*state",
                [r"instance_cgroup_state:kpulse_offcpu_seconds:rate5m\{"]),
            10: ("table", r"(?i)pods",
                 [r'\* on \(pod_uid\) group_left \(namespace, pod\)',
                  r'label_replace\(kube_pod_info, "pod_uid", "\$1", "uid", "\(\.\+\)"\)']),
            11: ("stat", r"(?i)probes", [r"^kpulse_probe_up\{"]),
            12: ("timeseries", r"(?i)map fill",
                 [r"^kpulse_bpf_map_entries\{[^}]*\} / kpulse_bpf_map_capacity\{"]),
            13: ("timeseries", r"(?i)scrape duration",
                 [r'rate\(kpulse_http_request_duration_seconds_sum\{handler="/metrics"',
                  r'/ rate\(kpulse_http_request_duration_seconds_count\{handler="/metrics"']),
            14: ("timeseries", r"(?i)ns per run",
                 [r"rate\(kpulse_bpf_program_run_seconds_total\{.*\* 1e9 / "
                  r"rate\(kpulse_bpf_program_runs_total\{"]),
        }
        for pid, (kind, title, patterns) in required.items():
            self.assertIn(pid, self.by_id, f"panel {pid} ({title})")
            panel = self.by_id[pid]
            self.assertEqual(panel["type"], kind, pid)
            self.assertRegex(panel["title"], title, pid)
            for pattern in patterns:
                self.assertTrue(any(re.search(pattern, e) for e in self.exprs(pid)),
                                f"panel {pid}: no expression matches {pattern}")
        heatmap = self.by_id[5]
        self.assertEqual(heatmap["targets"][0]["format"], "heatmap")
        self.assertFalse(heatmap["options"]["calculate"])
        self.assertTrue(any("{{state}}" in t["legendFormat"] for t in self.by_id[8]["targets"]))

    def test_variables_used_are_declared(self):
        declared = {v["name"] for v in self.dashboard["templating"]["list"]}
        for r in self.records:
            for name in re.findall(r"\$\{?(\w+)", r["expr"]):
                if not name.isdigit():
                    self.assertIn(name, declared | GRAFANA_BUILTINS, r["name"])

    def test_every_selector_filters_by_the_variables(self):
        cgroup_families = per_cgroup_families()
        self.assertIn("kpulse_runqueue_latency_seconds_bucket", cgroup_families)
        self.assertIn("kpulse_tcp_cgroup_retransmits_total", cgroup_families)
        checked = 0
        for r in self.records:
            if r["kind"] not in ("panel", "annotation"):
                continue
            for name, matchers in selectors(r["expr"]):
                if name.startswith("kube_"):
                    continue  # kube-state-metrics side of the pod join
                level = name.split(":")[0] if ":" in name else ""
                wanted = ["instance"]
                if name in cgroup_families or "cgroup" in level:
                    wanted = list(CGROUP_VARIABLES)
                elif "unit" in level:
                    wanted = ["instance", "unit"]
                elif "pod_uid" in level:
                    wanted = ["instance", "pod_uid"]
                for v in wanted:
                    self.assertIn(f'{v}=~"${v}"', matchers, f"{r['name']}: {name}")
                checked += 1
        self.assertGreater(checked, 20)

    def test_selector_scanner(self):
        self.assertEqual(
            selectors('sum by (le) (rate(a_bucket{x="}{", y=~"$y"}[5m])) * 1e9 / b:c:d'
                      ' + label_replace(kube_pod_info, "pod_uid", "$1", "uid", "(.+)")'),
            [("a_bucket", 'x="}{", y=~"$y"'), ("b:c:d", ""), ("kube_pod_info", "")])

    def test_recorded_series_exist_in_the_rule_files(self):
        if not os.path.exists(RECORDING_RULES):
            self.skipTest(f"{RECORDING_RULES} not there yet")
        _, rules = run_tool("--rules-only")
        recorded = {r["name"].split("/", 1)[1].split("#")[0] for r in rules
                    if r["kind"] == "record"}
        used = {name for r in self.records for name, _ in selectors(r["expr"]) if ":" in name}
        self.assertTrue(used)
        self.assertEqual(used - recorded, set())


if __name__ == "__main__":
    unittest.main()
