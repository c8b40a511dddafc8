// Loading deploy/kubernetes/*.yaml and finding the kubernetes-models class of each object.
import { readFileSync, readdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";

export const HERE = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(HERE, "..", "..");
export const MANIFEST_DIR = join(ROOT, "deploy", "kubernetes");
export const KUSTOMIZATION = "kustomization.yaml";

// Every manifest file (kustomization.yaml is kustomize's own file, checked separately).
export function manifestFiles() {
  return readdirSync(MANIFEST_DIR)
    .filter((name) => name.endsWith(".yaml") && name !== KUSTOMIZATION)
    .sort();
}

// Parses one YAML file strictly (a duplicate key or a syntax error throws): its documents.
export function parseYamlFile(path) {
  const docs = parseAllDocuments(readFileSync(path, "utf8"), { uniqueKeys: true });
  return docs
    .map((doc) => {
      if (doc.errors.length > 0) throw new Error(`${path}: ${doc.errors.map(String).join("; ")}`);
      return doc.toJS();
    })
    .filter((obj) => obj !== null);
}

// [{file, index, object}] for every object of every manifest file.
export function loadManifests() {
  const out = [];
  for (const file of manifestFiles()) {
    parseYamlFile(join(MANIFEST_DIR, file)).forEach((object, index) => {
      out.push({ file, index, object });
    });
  }
  return out;
}

// The module that holds the model of apiVersion/kind: core ("v1") and built-in groups come from
// kubernetes-models, monitoring.coreos.com from @kubernetes-models/prometheus-operator.
export function modelModule(apiVersion, kind) {
  if (typeof apiVersion !== "string" || typeof kind !== "string" || !/^[A-Za-z]+$/.test(kind)) {
    throw new Error(`apiVersion/kind missing or malformed: ${apiVersion} ${kind}`);
  }
  if (apiVersion.startsWith("monitoring.coreos.com/")) {
    return `@kubernetes-models/prometheus-operator/${apiVersion}/${kind}`;
  }
  return `kubernetes-models/${apiVersion}/${kind}`;
}

export async function modelClass(apiVersion, kind) {
  const mod = await import(modelModule(apiVersion, kind));
  const cls = mod[kind];
  if (typeof cls !== "function") throw new Error(`no model class ${kind} for ${apiVersion}`);
  return cls;
}

export function clone(value) {
  return JSON.parse(JSON.stringify(value));
}
