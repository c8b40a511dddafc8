// Every object in deploy/kubernetes/*.yaml against the Kubernetes and prometheus-operator OpenAPI
// models (npm kubernetes-models, @kubernetes-models/prometheus-operator: validate() throws on a
// schema violation), plus a check for fields the models do not have, and kustomization.yaml
// listing every manifest. Run: cd tests/kubernetes && npm ci && node --test validate.test.mjs
import assert from "node:assert/strict";
import { join } from "node:path";
import { test } from "node:test";
import {
  KUSTOMIZATION, MANIFEST_DIR, clone, loadManifests, manifestFiles, modelClass, parseYamlFile,
} from "./manifests.mjs";
import { unknownFields } from "./unknown-fields.mjs";

const manifests = loadManifests();

async function validate(object) {
  const Model = await modelClass(object.apiVersion, object.kind);
  new Model(object).validate();
}

function only(kind) {
  const found = manifests.filter((m) => m.object.kind === kind);
  assert.equal(found.length, 1, `exactly one ${kind} in deploy/kubernetes`);
  return clone(found[0].object);
}

test("deploy/kubernetes holds the objects the issue asks for", () => {
  const kinds = manifests.map((m) => `${m.object.apiVersion} ${m.object.kind}`).sort();
  for (const expected of [
    "apps/v1 DaemonSet", "v1 ConfigMap", "v1 Service", "v1 ServiceAccount",
    "monitoring.coreos.com/v1 ServiceMonitor", "monitoring.coreos.com/v1 PrometheusRule",
  ]) {
    assert.ok(kinds.includes(expected), `${expected} missing; found: ${kinds.join(", ")}`);
  }
});

for (const { file, index, object } of manifests) {
  const name = `${file}#${index} ${object.kind} ${object.metadata?.name}`;

  test(`${name} validates against its OpenAPI model`, async () => {
    await validate(object);
  });

  test(`${name} has no field its model lacks`, () => {
    assert.deepEqual(unknownFields(object), [], "fields the API does not know (misspelt?)");
  });
}

// The checks above must be able to fail: a broken copy of a real manifest has to be refused.
test("validation refuses capabilities.add given as a string instead of a list", async () => {
  const ds = only("DaemonSet");
  ds.spec.template.spec.containers[0].securityContext.capabilities.add = "BPF";
  await assert.rejects(validate(ds), /capabilities\/add must be array/);
});

test("validation refuses a container without a name, and a port given as a string", async () => {
  const ds = only("DaemonSet");
  delete ds.spec.template.spec.containers[0].name;
  await assert.rejects(validate(ds), /must have required property 'name'|required property name/);
  const svc = only("Service");
  svc.spec.ports[0].port = "10136";
  await assert.rejects(validate(svc), /port must be integer/);
});

test("validation refuses a PrometheusRule rule without expr", async () => {
  const rule = only("PrometheusRule");
  assert.ok(rule.spec.groups[0].rules.length > 0);
  delete rule.spec.groups[0].rules[0].expr;
  await assert.rejects(validate(rule), /required property 'expr'|required property expr/);
});

test("the unknown-field check flags misspelt fields at any depth", () => {
  const ds = only("DaemonSet");
  const sc = ds.spec.template.spec.containers[0].securityContext;
  sc.readOnlyRootFileSystem = true;  // the real field is readOnlyRootFilesystem
  ds.spec.template.spec.tolerations[0].operater = "Exists";
  assert.deepEqual(unknownFields(ds).sort(), [
    "spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem",
    "spec.template.spec.tolerations[0].operater",
  ]);
  const sm = only("ServiceMonitor");
  sm.spec.endpoints[0].relabelings[0].sourcelabels = ["x"];
  assert.deepEqual(unknownFields(sm), ["spec.endpoints[0].relabelings[0].sourcelabels"]);
  const rule = only("PrometheusRule");
  rule.spec.groups[0].rules[0].bogus = 1;
  assert.deepEqual(unknownFields(rule), ["spec.groups[0].rules[0].bogus"]);
});

test("kustomization.yaml lists every manifest exactly once, and nothing else", () => {
  const [kustomization] = parseYamlFile(join(MANIFEST_DIR, KUSTOMIZATION));
  assert.equal(kustomization.apiVersion, "kustomize.config.k8s.io/v1beta1");
  assert.equal(kustomization.kind, "Kustomization");
  const listed = kustomization.resources;
  assert.equal(new Set(listed).size, listed.length, "a resource listed twice");
  assert.deepEqual([...listed].sort(), manifestFiles());
});

test("objects are unique and, except the Namespace, all in the kpulse namespace", () => {
  const ids = manifests.map((m) => `${m.object.kind}/${m.object.metadata.namespace}/${m.object.metadata.name}`);
  assert.equal(new Set(ids).size, ids.length, `duplicates in ${ids.join(", ")}`);
  for (const { file, object } of manifests) {
    if (object.kind === "Namespace") {
      assert.equal(object.metadata.name, "kpulse");
    } else {
      assert.equal(object.metadata.namespace, "kpulse", `${file}: ${object.kind} namespace`);
    }
  }
});
