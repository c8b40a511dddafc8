// Finds fields that the API does not have. The models' validate() checks types, enums and
// required fields but lets unknown fields through (a misspelt `readOnlyRootFileSystem: true`
// passes it, and the API server would drop it), so this walks each object along the field lists
// of the models' own type declarations (the .d.ts files shipped in kubernetes-models and
// @kubernetes-models/*: one `export declare class` per type, one `"field"?: Type;` line per
// field). Types it cannot follow (aliases such as IntOrString or Quantity, unions, literals) are
// leaves: nothing below them is checked, nothing is flagged wrongly.
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { HERE, modelModule } from "./manifests.mjs";

const NODE_MODULES = join(HERE, "node_modules");
const cache = new Map();  // .d.ts path -> {fields: Map(name -> type text), imports} | null

function declarationPath(specifier, fromFile) {
  let base;
  if (specifier.startsWith(".")) {
    base = join(dirname(fromFile), specifier);
  } else {
    base = join(NODE_MODULES, specifier);
  }
  const path = base.replace(/\.js$/, "") + ".d.ts";
  if (!existsSync(path)) throw new Error(`type declarations not found: ${path} (from ${fromFile})`);
  return path;
}

// Field names and type texts of the one class declared in a .d.ts file (null if none: an alias).
function parseDeclaration(path) {
  if (cache.has(path)) return cache.get(path);
  const text = readFileSync(path, "utf8");
  const imports = new Map();
  for (const m of text.matchAll(/^import \{([^}]+)\} from "([^"]+)";$/gm)) {
    for (const part of m[1].split(",")) {
      const words = part.trim().split(/\s+as\s+/);
      imports.set(words[words.length - 1], m[2]);
    }
  }
  const lines = text.split("\n");
  const start = lines.findIndex((line) => /^export declare class \w+ /.test(line));
  if (start < 0) {
    cache.set(path, null);
    return null;
  }
  const fields = new Map();
  for (let i = start + 1; i < lines.length && lines[i] !== "}"; i++) {
    const m = /^ {4}"([^"]+)"\??: (.*)$/.exec(lines[i]);
    if (!m) continue;
    let type = m[2];
    if (type === "{") {  // a map: {\n [key: string]: T;\n };
      const inner = /^\s*\[key: string\]: (.*);$/.exec(lines[i + 1] ?? "");
      type = inner ? `Map<${inner[1]}>` : "?";
      while (i < lines.length && !/^ {4}\};$/.test(lines[i])) i++;
    }
    fields.set(m[1], type.replace(/;$/, ""));
  }
  const declaration = { path, fields, imports };
  cache.set(path, declaration);
  return declaration;
}

// A type text, seen from a declaration: {kind: "object", decl} | {kind: "array"|"map", of} | leaf.
function resolveType(type, from) {
  type = type.trim().replace(/\s*\|\s*null$/, "");
  let m;
  if ((m = /^Array<(.*)>$/.exec(type))) return { kind: "array", of: resolveType(m[1], from) };
  if ((m = /^Map<(.*)>$/.exec(type))) return { kind: "map", of: resolveType(m[1], from) };
  if (/^I\w+$/.test(type) && from.imports.has(type)) {
    const decl = parseDeclaration(declarationPath(from.imports.get(type), from.path));
    return decl ? { kind: "object", decl } : { kind: "leaf" };
  }
  return { kind: "leaf" };
}

function walk(value, type, path, out) {
  if (value === null || value === undefined) return;
  if (type.kind === "array" && Array.isArray(value)) {
    value.forEach((item, i) => walk(item, type.of, `${path}[${i}]`, out));
  } else if (type.kind === "map" && typeof value === "object") {
    for (const [key, item] of Object.entries(value)) walk(item, type.of, `${path}.${key}`, out);
  } else if (type.kind === "object" && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, item] of Object.entries(value)) {
      const fieldType = type.decl.fields.get(key);
      if (fieldType === undefined) {
        out.push(`${path ? path + "." : ""}${key}`);
      } else {
        walk(item, resolveType(fieldType, type.decl), `${path ? path + "." : ""}${key}`, out);
      }
    }
  }
}

// Paths (e.g. "spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem") of the
// fields of `object` that its model does not declare.
export function unknownFields(object) {
  const declPath = declarationPath(modelModule(object.apiVersion, object.kind), NODE_MODULES);
  const decl = parseDeclaration(declPath);
  if (!decl) throw new Error(`no class declared in ${declPath}`);
  const out = [];
  walk(object, { kind: "object", decl }, "", out);
  return out;
}
