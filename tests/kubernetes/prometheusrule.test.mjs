// deploy/kubernetes/prometheusrule.yaml carries exactly the rule groups of the Prometheus rule
// files, read here independently of the generator (deploy/tools/gen-prometheusrule). The byte
// comparison with a fresh generation is prometheusrule_current.sh.
import assert from "node:assert/strict";
import { readdirSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { MANIFEST_DIR, ROOT, parseYamlFile } from "./manifests.mjs";

const RULES_DIR = join(ROOT, "deploy", "prometheus");
const REGENERATE = "deploy/tools/gen-prometheusrule";

function ruleFileGroups() {
  const files = readdirSync(RULES_DIR).filter((f) => /^kpulse-.*\.yml$/.test(f) && !f.endsWith(".test.yml"));
  assert.ok(files.includes("kpulse-alerts.yml"), `no kpulse-alerts.yml in ${RULES_DIR}`);
  const byName = new Map();
  for (const file of files) {
    const [doc] = parseYamlFile(join(RULES_DIR, file));
    for (const group of doc.groups) {
      assert.ok(!byName.has(group.name), `group ${group.name} twice`);
      byName.set(group.name, group);
    }
  }
  return byName;
}

test("the PrometheusRule has the rule files' groups, unchanged (else run " + REGENERATE + ")", () => {
  const [rule] = parseYamlFile(join(MANIFEST_DIR, "prometheusrule.yaml"));
  assert.equal(rule.kind, "PrometheusRule");
  const expected = ruleFileGroups();
  const actual = new Map(rule.spec.groups.map((g) => [g.name, g]));
  assert.equal(actual.size, rule.spec.groups.length, "duplicate group names in the PrometheusRule");
  assert.deepEqual([...actual.keys()].sort(), [...expected.keys()].sort(), `groups differ; run ${REGENERATE}`);
  for (const [name, group] of expected) {
    assert.deepEqual(actual.get(name), group, `group ${name} differs; run ${REGENERATE}`);
  }
});

test("every alert of the rule files is in the PrometheusRule", () => {
  const [rule] = parseYamlFile(join(MANIFEST_DIR, "prometheusrule.yaml"));
  const alerts = (groups) => groups.flatMap((g) => g.rules.filter((r) => r.alert).map((r) => r.alert)).sort();
  const expected = alerts([...ruleFileGroups().values()]);
  assert.ok(expected.includes("KpulseSynRetransmitSpike"));
  assert.deepEqual(alerts(rule.spec.groups), expected);
});
