// The security policy of the manifests (deploy/kubernetes/README.md, "Privileges"): no
// privileged container, every container drops ALL capabilities and adds exactly the documented
// set, no host namespaces, host mounts read-only and only the documented ones, and a kpulse
// configuration that matches the pod (listen address, /debug exposure, privileges).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { parse } from "yaml";
import { MANIFEST_DIR, clone, loadManifests } from "./manifests.mjs";

// README.md, "Privileges": what each of these is for.
export const CAPABILITIES = ["BPF", "PERFMON", "SETGID", "SETUID"];
const HOST_PATHS = ["/sys/fs/cgroup"];
const PORT = 10136;

function podSpecs(objects) {
  const out = [];
  for (const object of objects) {
    if (object.kind === "Pod") out.push({ owner: object, spec: object.spec });
    else if (object.spec?.template?.spec) out.push({ owner: object, spec: object.spec.template.spec });
    else if (object.spec?.jobTemplate?.spec?.template?.spec) {
      out.push({ owner: object, spec: object.spec.jobTemplate.spec.template.spec });
    }
  }
  return out;
}

function findPrivileged(value, path, out) {
  if (Array.isArray(value)) value.forEach((v, i) => findPrivileged(v, `${path}[${i}]`, out));
  else if (value && typeof value === "object") {
    for (const [k, v] of Object.entries(value)) {
      if (k === "privileged" && v === true) out.push(`${path}.${k}: true`);
      findPrivileged(v, `${path}.${k}`, out);
    }
  }
}

function isLoopback(address) {
  return /^127\./.test(address) || address.startsWith("[::1]:");
}

// Every rule the manifests break, as messages (empty: all kept).
export function policyViolations(objects) {
  const problems = [];
  const v = (msg) => problems.push(msg);
  for (const object of objects) {
    const found = [];
    findPrivileged(object, `${object.kind}/${object.metadata?.name}`, found);
    found.forEach(v);
  }
  const pods = podSpecs(objects);
  if (pods.length === 0) v("no pod template found");
  for (const { owner, spec } of pods) {
    const where = `${owner.kind}/${owner.metadata.name}`;
    for (const ns of ["hostNetwork", "hostPID", "hostIPC"]) {
      if (spec[ns] === true) v(`${where}: ${ns} is true`);
    }
    if (!(spec.tolerations ?? []).some((t) => t.operator === "Exists" && !t.key && !t.effect)) {
      v(`${where}: no toleration {operator: Exists} for every taint`);
    }
    if (spec.priorityClassName !== "system-node-critical") v(`${where}: priorityClassName`);
    const podSeccomp = spec.securityContext?.seccompProfile?.type;
    const hostVolumes = new Map();
    for (const volume of spec.volumes ?? []) {
      if (volume.hostPath) {
        hostVolumes.set(volume.name, volume.hostPath.path);
        if (!HOST_PATHS.includes(volume.hostPath.path)) {
          v(`${where}: hostPath ${volume.hostPath.path} is not one of ${HOST_PATHS}`);
        }
      }
    }
    const containers = [
      ...(spec.initContainers ?? []), ...(spec.containers ?? []), ...(spec.ephemeralContainers ?? []),
    ];
    for (const c of containers) {
      const cw = `${where} container ${c.name}`;
      const sc = c.securityContext ?? {};
      const caps = sc.capabilities ?? {};
      if (JSON.stringify(caps.drop) !== JSON.stringify(["ALL"])) v(`${cw}: capabilities.drop is not [ALL]`);
      const added = [...(caps.add ?? [])].map((cap) => cap.replace(/^CAP_/, "")).sort();
      if (JSON.stringify(added) !== JSON.stringify(CAPABILITIES)) {
        v(`${cw}: capabilities.add is [${added}], documented: [${CAPABILITIES}]`);
      }
      if (sc.allowPrivilegeEscalation !== false) v(`${cw}: allowPrivilegeEscalation is not false`);
      if (sc.readOnlyRootFilesystem !== true) v(`${cw}: readOnlyRootFilesystem is not true`);
      if ((sc.seccompProfile?.type ?? podSeccomp) !== "RuntimeDefault") v(`${cw}: seccomp is not RuntimeDefault`);
      for (const m of c.volumeMounts ?? []) {
        if (hostVolumes.has(m.name) && m.readOnly !== true) v(`${cw}: host mount ${m.mountPath} is writable`);
      }
      const r = c.resources ?? {};
      for (const kind of ["cpu", "memory"]) {
        if (!r.requests?.[kind] || !r.limits?.[kind]) v(`${cw}: no ${kind} request and limit`);
      }
    }
  }
  problems.push(...configViolations(objects));
  return problems;
}

// The kpulse configuration in the ConfigMap against the pod that runs it.
function configViolations(objects) {
  const problems = [];
  const v = (msg) => problems.push(msg);
  const ds = objects.find((o) => o.kind === "DaemonSet");
  const cm = objects.find((o) => o.kind === "ConfigMap" && o.metadata.name === "kpulse-config");
  if (!ds || !cm) return ["no kpulse DaemonSet or ConfigMap kpulse-config"];
  const config = parse(cm.data["kpulse.yaml"]);
  const container = ds.spec.template.spec.containers.find((c) => c.name === "kpulse");
  const command = [...(container.command ?? []), ...(container.args ?? [])];
  const webConfig = command.some((arg) => arg.startsWith("--web.config.file"));
  const listen = config.http?.listen_addresses ?? ["127.0.0.1:10136"];
  if (!listen.every(isLoopback) && !webConfig && config.probes?.offcpu?.stacks?.enabled !== false) {
    v("config: a non-loopback listen address without a web config, and off-CPU stacks not explicitly off");
  }
  if (!listen.some((a) => a.endsWith(`:${PORT}`))) v(`config: no listen address on port ${PORT}`);
  if (!container.ports.some((p) => p.name === "metrics" && p.containerPort === PORT)) {
    v(`DaemonSet: no container port "metrics" ${PORT}`);
  }
  const added = new Set((container.securityContext?.capabilities?.add ?? []).map((c) => c.replace(/^CAP_/, "")));
  const p = config.privileges ?? {};
  if (p.drop !== true) v("config: privileges.drop is not true");
  if (p.reload_attach === true) v("config: privileges.reload_attach keeps CAP_BPF/CAP_PERFMON after start-up");
  const switchesUser = typeof p.user === "string" && p.user !== "";
  if (switchesUser !== (added.has("SETUID") && added.has("SETGID"))) {
    v("config: privileges.user and CAP_SETUID/CAP_SETGID do not go together");
  }
  if ((p.cgroup_file_handles !== false) !== added.has("DAC_READ_SEARCH")) {
    v("config: privileges.cgroup_file_handles and CAP_DAC_READ_SEARCH do not go together");
  }
  const configIndex = command.indexOf("--config");
  const configPath = configIndex >= 0 ? command[configIndex + 1] : "/etc/kpulse/kpulse.yaml";
  const configVolume = ds.spec.template.spec.volumes.find((vol) => vol.configMap?.name === cm.metadata.name);
  const mount = configVolume && container.volumeMounts.find((m) => m.name === configVolume.name);
  if (!mount || configPath !== `${mount.mountPath}/kpulse.yaml`) v(`DaemonSet: --config ${configPath} is not the ConfigMap's kpulse.yaml`);
  for (const kind of ["Service", "ServiceMonitor", "NetworkPolicy"]) {
    const o = objects.find((x) => x.kind === kind);
    const ports = kind === "Service" ? o?.spec.ports.map((x) => x.targetPort)
      : kind === "ServiceMonitor" ? o?.spec.endpoints.map((x) => x.port)
        : o?.spec.ingress.flatMap((rule) => rule.ports.map((x) => x.port));
    if (!ports || !ports.includes("metrics")) v(`${kind}: does not point at the "metrics" port`);
  }
  return problems;
}

const objects = loadManifests().map((m) => m.object);

test("the manifests keep the security policy", () => {
  assert.deepEqual(policyViolations(objects), []);
});

test("README.md names and explains every added capability", () => {
  const readme = readFileSync(join(MANIFEST_DIR, "README.md"), "utf8");
  for (const cap of CAPABILITIES) assert.match(readme, new RegExp(`\\| \`CAP_${cap}\``), `CAP_${cap} row`);
});

// Each rule must be able to fail: broken copies of the real manifests.
function mutated(change) {
  const copy = clone(objects);
  const ds = copy.find((o) => o.kind === "DaemonSet");
  change({ ds, pod: ds.spec.template.spec, c: ds.spec.template.spec.containers[0], copy });
  return policyViolations(copy).join("\n");
}

test("the policy check catches a privileged container", () => {
  assert.match(mutated(({ c }) => { c.securityContext.privileged = true; }), /privileged: true/);
});

test("the policy check catches an extra, a missing or an undropped capability", () => {
  assert.match(mutated(({ c }) => { c.securityContext.capabilities.add.push("SYS_ADMIN"); }), /capabilities.add/);
  assert.match(mutated(({ c }) => { c.securityContext.capabilities.add.pop(); }), /capabilities.add/);
  assert.match(mutated(({ c }) => { delete c.securityContext.capabilities.drop; }), /drop is not \[ALL\]/);
});

test("the policy check catches host namespaces, writable host mounts and other host paths", () => {
  assert.match(mutated(({ pod }) => { pod.hostNetwork = true; }), /hostNetwork is true/);
  assert.match(mutated(({ pod }) => { pod.hostPID = true; }), /hostPID is true/);
  assert.match(mutated(({ c }) => { c.volumeMounts.forEach((m) => { m.readOnly = false; }); }), /host mount .* is writable/);
  assert.match(mutated(({ pod }) => { pod.volumes.push({ name: "root", hostPath: { path: "/" } }); }), /hostPath \/ is not/);
});

test("the policy check catches escalation, a writable root, no seccomp, no tolerations", () => {
  assert.match(mutated(({ c }) => { c.securityContext.allowPrivilegeEscalation = true; }), /allowPrivilegeEscalation/);
  assert.match(mutated(({ c }) => { delete c.securityContext.readOnlyRootFilesystem; }), /readOnlyRootFilesystem/);
  assert.match(mutated(({ pod, c }) => { delete pod.securityContext; delete c.securityContext.seccompProfile; }), /seccomp/);
  assert.match(mutated(({ pod }) => { pod.tolerations = [{ key: "x", operator: "Exists" }]; }), /toleration/);
});

test("the policy check catches a configuration that does not match the pod", () => {
  const withConfig = (edit) => mutated(({ copy }) => {
    const cm = copy.find((o) => o.kind === "ConfigMap");
    const config = parse(cm.data["kpulse.yaml"]);
    edit(config);
    cm.data["kpulse.yaml"] = JSON.stringify(config);
  });
  assert.match(withConfig((c) => { c.probes.offcpu.stacks.enabled = true; }), /off-CPU stacks/);
  assert.match(withConfig((c) => { delete c.probes.offcpu.stacks.enabled; }), /off-CPU stacks/);
  assert.match(withConfig((c) => { c.privileges.user = ""; }), /privileges.user/);
  assert.match(withConfig((c) => { c.privileges.cgroup_file_handles = true; }), /cgroup_file_handles/);
  assert.match(withConfig((c) => { c.privileges.reload_attach = true; }), /reload_attach/);
  assert.match(withConfig((c) => { c.http.listen_addresses = ["0.0.0.0:9100"]; }), /port 10136/);
});
