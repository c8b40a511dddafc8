#!/usr/bin/python3
"""The alerts and the dashboard, proven in a real Prometheus (issue 12's end-to-end test).

The built daemon runs with the shipped config (on a free loopback port, bpf_stats on); a real
Prometheus (Debian's) scrapes it every second and evaluates the shipped rule files, with every
duration in them divided by SCALE, so that 10 minutes of baseline take 30 s. Two private network
namespaces drop the initial SYNs of one port each, so that every connect there retransmits its SYN
exactly once (tcp_syn_retries=1):
  - a steady trickle (1 connect/s), from a cgroup shaped like a Kubernetes container, to port 5012
    in one namespace, for the whole run;
  - a storm (20 connects/s for 30 s), from a cgroup shaped like a systemd service, to port 5011 in
    the other, after the baseline.
Through Prometheus's HTTP API it checks that the target is up; that every expression of the
dashboard and the rules parses and answers, and that each one the scenario gives data to is
non-empty; that KpulseSynRetransmitSpike fires during the storm and is gone after it, while the
trickle never fires anything; and that the SYN retransmits Prometheus holds for the storm equal the
storm namespace's TcpExt TCPSynRetrans. At the end it renders the dashboard's main panels to PNG
(deploy/tools/render-panels) into $KPULSE_PANELS_DIR (default: a directory beside this run's
temporary files, printed).

Root is needed (namespaces, cgroups, BPF). Without root it skips (exit 77), except under CI=true,
where a skip is a failure. Everything it creates is removed however it ends.

    sudo /usr/bin/python3 tests/e2e/alerts_e2e_test.py KPULSE_BINARY
"""

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import yaml

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
RULE_FILES = [os.path.join(REPO, "deploy", "prometheus", name)
              for name in ("kpulse-rules.yml", "kpulse-alerts.yml")]
EXPRESSIONS_TOOL = os.path.join(REPO, "deploy", "tools", "promql-expressions")
RENDER_TOOL = os.path.join(REPO, "deploy", "tools", "render-panels")
SHIPPED_CONFIG = os.path.join(REPO, "config", "kpulse.yaml")

SCALE = 20            # every duration of the rule files is divided by this
BASELINE_S = 30       # 10 minutes of baseline, accelerated
STORM_S = 30
STORM_PER_S = 20
TRICKLE_PER_S = 1
STORM_PORT, TRICKLE_PORT = 5011, 5012
# The trickle's cgroup: a containerd container of a burstable pod (systemd cgroup driver).
POD_UID = "2b9a7c1e-5d4f-4a3b-9c8d-7e6f5a4b3c2d"
CONTAINER_ID = "c0ffee" + "0" * 52 + "123456"
# Expressions the scenario gives no data to, and why. Every other one must return something.
EXPECTED_EMPTY = {
    "kube_pod_info": "no kube-state-metrics in this test",
    "node_netstat_": "no node_exporter in this test",
    "kpulse_series_folded_total": "no series cap is reached",
    "ALERTS": "only non-empty while an alert is pending or firing",
}
# An alert's expression is non-empty only while its condition holds: during the storm, exactly
# these (the pod's trickle is steady; nothing else is wrong with the node).
FIRING_IN_STORM = {"KpulseSynRetransmitSpike", "KpulseSynRetransmitSpikeByEndpoint",
                   "KpulseSynRetransmitSpikeByUnit"}


class Skip(Exception):
    pass


def log(*args):
    print(time.strftime("%H:%M:%S"), *args, flush=True)


def run(*argv, check=True, **kwargs):
    return subprocess.run(list(argv), check=check, capture_output=True, text=True, **kwargs)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cgroup2_root():
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            if right.split()[0] == "cgroup2":
                return left.split()[4]
    raise RuntimeError("no cgroup2 mount")


def scale_durations(text):
    """Divides every Prometheus duration (5m, 1h, 30s) in `text` by SCALE, in seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def scaled(match):
        seconds = int(match.group(1)) * units[match.group(2)] / SCALE
        return f"{max(1, round(seconds))}s"

    return re.sub(r"(?<![\w.])(\d+)([smhd])(?![\w])", scaled, text)


def scaled_rule_files(directory):
    """The shipped rule files with every `for:` and every duration in expressions and
    annotation templates scaled (descriptions' prose is scaled too: harmless)."""
    paths = []
    for source in RULE_FILES:
        with open(source) as f:
            rules = yaml.safe_load(f)
        for group in rules["groups"]:
            for rule in group["rules"]:
                rule["expr"] = scale_durations(str(rule["expr"]))
                if "for" in rule:
                    rule["for"] = scale_durations(str(rule["for"]))
                for key, value in (rule.get("annotations") or {}).items():
                    rule["annotations"][key] = scale_durations(value)
        path = os.path.join(directory, os.path.basename(source))
        with open(path, "w") as f:
            yaml.safe_dump(rules, f, width=10000)
        paths.append(path)
    return paths


class Prometheus:
    def __init__(self, port):
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path, **params):
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            return json.load(e)

    def query(self, expr, at=None):
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        answer = self.get("/api/v1/query", **params)
        if answer.get("status") != "success":
            raise AssertionError(f"query failed: {expr}: {answer.get('error')}")
        return answer["data"]["result"]


class Scenario(contextlib.ExitStack):
    """Namespaces, nft rules, cgroups and processes, all undone on exit."""

    def __init__(self):
        super().__init__()
        self.tag = f"kpe{os.getpid()}"
        self.processes = []

    def netns(self, role, port):
        name = f"{self.tag}-{role}"
        run("ip", "netns", "add", name)
        self.callback(run, "ip", "netns", "delete", name, check=False)
        run("ip", "-n", name, "link", "set", "lo", "up")
        run("ip", "netns", "exec", name, "sysctl", "-qw", "net.ipv4.tcp_syn_retries=1")
        # The namespace's nft table goes with the namespace.
        run("ip", "netns", "exec", name, "nft",
            f"add table inet {self.tag}; "
            f"add chain inet {self.tag} input {{ type filter hook input priority 0; }}; "
            f"add rule inet {self.tag} input tcp dport {port} tcp flags & (syn|ack) == syn drop")
        return name

    def cgroup(self, *parts):
        path = cgroup2_root()
        for part in parts:
            path = os.path.join(path, part)
            if not os.path.isdir(path):
                os.mkdir(path)
                self.callback(self._rmdir, path)
        return path

    def _rmdir(self, path):
        for _ in range(50):
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)

    def start(self, argv, cgroup=None, **kwargs):
        def enter():
            if cgroup:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as f:
                    f.write("0")
        process = subprocess.Popen(argv, preexec_fn=enter, start_new_session=True, **kwargs)
        self.processes.append(process)
        self.callback(self._stop, process)
        return process

    @staticmethod
    def _stop(process):
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def connector(netns, port, per_second, seconds):
    """A process in `netns` that opens `per_second` blackholed connects a second, each held
    2.5 s (past its one SYN retransmit at 1 s, before the next at 3 s)."""
    program = f"""
import socket, time
end = time.monotonic() + {seconds}
held = []
while time.monotonic() < end:
    tick = time.monotonic()
    for _ in range({per_second}):
        s = socket.socket()
        s.setblocking(False)
        try:
            s.connect(("127.0.0.1", {port}))
        except BlockingIOError:
            pass
        held.append((tick + 2.5, s))
    while held and held[0][0] <= time.monotonic():
        held.pop(0)[1].close()
    time.sleep(max(0.0, tick + 1.0 - time.monotonic()))
while held:
    time.sleep(max(0.0, held[0][0] - time.monotonic()))
    held.pop(0)[1].close()
"""
    return ["ip", "netns", "exec", netns, "/usr/bin/python3", "-c", program]


def syn_retrans(netns):
    out = run("ip", "netns", "exec", netns, "cat", "/proc/net/netstat").stdout.splitlines()
    for names, values in zip(out[0::2], out[1::2]):
        if names.startswith("TcpExt:"):
            return int(dict(zip(names.split()[1:], values.split()[1:]))["TCPSynRetrans"])
    raise RuntimeError("no TcpExt line")


def expressions(rule_files, interval):
    out = run(EXPRESSIONS_TOOL, "--substitute", "--interval", interval, "--panel-title",
              os.path.join(REPO, "deploy", "grafana", "kpulse.json"), *rule_files).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def expected_empty(record):
    expr, name = record["expr"], record.get("name", "")
    for marker, why in EXPECTED_EMPTY.items():
        if marker in expr or marker in name:
            return why
    if record.get("kind") == "template_query":
        return "annotation query: checked to parse, its data depends on the alert"
    if record.get("kind") == "alert":
        alertname = name.split("/")[1].split("#")[0]
        return None if alertname in FIRING_IN_STORM else "its condition does not hold here"
    return None


def ours(alert_labels):
    """Whether an alert is about this test's traffic: the node's total, or the storm's or the
    trickle's endpoint, unit or pod (other activity on the node may fire alerts of its own)."""
    if alert_labels["alertname"] == "KpulseSynRetransmitSpike":
        return True
    return (alert_labels.get("rport") in (str(STORM_PORT), str(TRICKLE_PORT))
            or alert_labels.get("unit") == "storm.service"
            or alert_labels.get("pod_uid") == POD_UID)


def alert_states(prom, alertname, **labels):
    matchers = "".join(f',{k}="{v}"' for k, v in labels.items())
    return {r["metric"]["alertstate"]
            for r in prom.query(f'ALERTS{{alertname="{alertname}"{matchers}}}')}


def main(binary):
    if os.geteuid() != 0:
        raise Skip("needs root (network namespaces, cgroups, BPF)")
    failures = []

    def check(condition, message):
        print(("ok   " if condition else "FAIL ") + message, flush=True)
        if not condition:
            failures.append(message)

    with Scenario() as sc:
        work = tempfile.mkdtemp(prefix="kpulse-alerts-e2e.")
        sc.callback(shutil.rmtree, work, True)
        storm_ns = sc.netns("storm", STORM_PORT)
        trickle_ns = sc.netns("trickle", TRICKLE_PORT)
        top = f"kpulse-e2e-{os.getpid()}.slice"
        storm_cg = sc.cgroup(top, "storm.service")
        trickle_cg = sc.cgroup(top, "kubepods.slice", "kubepods-burstable.slice",
                               f"kubepods-burstable-pod{POD_UID.replace('-', '_')}.slice",
                               f"cri-containerd-{CONTAINER_ID}.scope")

        kpulse_port, prom_port = free_port(), free_port()
        with open(SHIPPED_CONFIG) as f:
            config = yaml.safe_load(f)
        config["http"]["listen_addresses"] = [f"127.0.0.1:{kpulse_port}"]
        config["bpf_stats"] = True  # the dashboard's BPF cost panel
        config_path = os.path.join(work, "kpulse.yaml")
        with open(config_path, "w") as f:
            yaml.safe_dump(config, f)
        daemon_log = open(os.path.join(work, "kpulse.log"), "w")
        sc.callback(daemon_log.close)
        sc.start([binary, "--config", config_path], stdout=daemon_log, stderr=subprocess.STDOUT)

        rule_files = scaled_rule_files(work)
        prom_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files,
            "scrape_configs": [{"job_name": "kpulse",
                                "static_configs": [{"targets": [f"127.0.0.1:{kpulse_port}"]}]}],
        }
        prom_yml = os.path.join(work, "prometheus.yml")
        with open(prom_yml, "w") as f:
            yaml.safe_dump(prom_config, f)
        prom_log = open(os.path.join(work, "prometheus.log"), "w")
        sc.callback(prom_log.close)
        sc.start(["/usr/bin/prometheus", f"--config.file={prom_yml}",
                  f"--storage.tsdb.path={work}/tsdb", f"--web.listen-address=127.0.0.1:{prom_port}",
                  "--log.level=warn"], stdout=prom_log, stderr=subprocess.STDOUT)
        prom = Prometheus(prom_port)

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if [r["value"][1] for r in prom.query('up{job="kpulse"}')] == ["1"]:
                    break
            time.sleep(0.5)
        check([r["value"][1] for r in prom.query('up{job="kpulse"}')] == ["1"],
              "Prometheus scrapes kpulse: up == 1")
        if failures:
            raise AssertionError("; ".join(failures))

        start = time.time()
        storm_truth0 = syn_retrans(storm_ns)
        total_s = BASELINE_S + STORM_S + 40
        sc.start(connector(trickle_ns, TRICKLE_PORT, TRICKLE_PER_S, total_s), cgroup=trickle_cg)

        # Baseline: the trickle alone never fires a spike alert. (While its series are young, the
        # 1 h median lags the ramp-up and an alert may go pending; `for:` keeps it from firing.)
        log(f"baseline: {BASELINE_S} s of a {TRICKLE_PER_S}/s trickle")
        fired_in_baseline, pending_in_baseline = set(), set()
        while time.time() < start + BASELINE_S:
            for r in prom.query('ALERTS{alertname=~"KpulseSynRetransmitSpike.*"}'):
                if not ours(r["metric"]):
                    continue
                (fired_in_baseline if r["metric"]["alertstate"] == "firing"
                 else pending_in_baseline).add(r["metric"]["alertname"])
            time.sleep(1)
        check(not fired_in_baseline,
              f"no spike alert fires during the steady trickle (fired: {sorted(fired_in_baseline)}, "
              f"pending at times: {sorted(pending_in_baseline)})")

        log(f"storm: {STORM_PER_S}/s for {STORM_S} s")
        storm = sc.start(connector(storm_ns, STORM_PORT, STORM_PER_S, STORM_S), cgroup=storm_cg)
        storm_start = time.time()
        firing = set()
        trickle_alerts = set()
        while time.time() < storm_start + STORM_S:
            for r in prom.query('ALERTS{alertname=~"KpulseSynRetransmitSpike.*",alertstate="firing"}'):
                if ours(r["metric"]) and r["metric"].get("rport") != str(TRICKLE_PORT):
                    firing.add(r["metric"]["alertname"])
                if r["metric"].get("rport") == str(TRICKLE_PORT) or r["metric"].get("pod_uid") == POD_UID:
                    trickle_alerts.add(json.dumps(r["metric"], sort_keys=True))
            time.sleep(1)
        check("KpulseSynRetransmitSpike" in firing,
              f"KpulseSynRetransmitSpike fires during the storm (firing: {sorted(firing)})")
        check("KpulseSynRetransmitSpikeByEndpoint" in firing,
              "KpulseSynRetransmitSpikeByEndpoint fires for the storm's endpoint")
        check("KpulseSynRetransmitSpikeByUnit" in firing,
              "KpulseSynRetransmitSpikeByUnit fires for storm.service")
        check(not trickle_alerts, f"the trickle's endpoint and pod never fire ({trickle_alerts})")

        # Every expression parses and answers while the storm's data is there.
        now = time.time()
        empty = []
        exprs = expressions(rule_files, "5s")
        for record in exprs:
            answer = prom.get("/api/v1/query", query=record["expr"], time=f"{now:.3f}")
            label = record.get("name") or record["expr"][:60]
            if answer.get("status") != "success":
                check(False, f"{label} answers: {answer.get('error')}")
                continue
            why = expected_empty(record)
            if not answer["data"]["result"] and why is None:
                empty.append(label)
        check(len(exprs) >= 30, f"{len(exprs)} expressions of the dashboard and rules were run")
        check(not empty, f"every expression with data in this scenario is non-empty (empty: {empty})")

        storm.wait(timeout=30)
        time.sleep(4)  # the last connects' retransmits, then two scrapes
        storm_truth = syn_retrans(storm_ns) - storm_truth0
        time.sleep(3)
        flows = prom.query(f'sum(kpulse_tcp_flow_retransmits_total{{kind="syn",rport="{STORM_PORT}"}})')
        units = prom.query('sum(kpulse_tcp_cgroup_retransmits_total{kind="syn",unit="storm.service"})')
        prom_flows = int(float(flows[0]["value"][1])) if flows else -1
        prom_unit = int(float(units[0]["value"][1])) if units else -1
        # The storm's flow and cgroup series were born in this test, so the counter Prometheus
        # holds is their whole increase.
        check(prom_flows == storm_truth,
              f"SYN retransmits to the storm's endpoint in Prometheus {prom_flows} = the storm "
              f"namespace's TCPSynRetrans {storm_truth} ({STORM_PER_S * STORM_S} connects)")
        check(prom_unit == storm_truth,
              f"SYN retransmits of storm.service in Prometheus {prom_unit} = TCPSynRetrans {storm_truth}")

        # After the storm: the alert resolves.
        log("after the storm: waiting for the alert to resolve")
        deadline = time.time() + 40
        while time.time() < deadline and alert_states(prom, "KpulseSynRetransmitSpike"):
            time.sleep(1)
        check(not alert_states(prom, "KpulseSynRetransmitSpike"),
              f"KpulseSynRetransmitSpike resolved {time.time() - storm_start - STORM_S:.0f} s "
              "after the storm")
        end = time.time()

        panels_dir = os.environ.get("KPULSE_PANELS_DIR") or os.path.join(
            tempfile.gettempdir(), "kpulse-e2e-panels")
        os.makedirs(panels_dir, exist_ok=True)
        rendered = run(RENDER_TOOL, "--prometheus", prom.base, "--start", f"{start:.0f}",
                       "--end", f"{end:.0f}", "--step", "1s", "--interval", "5s", "--require-data",
                       "--out", panels_dir, check=False)
        check(rendered.returncode == 0,
              f"panels rendered to {panels_dir}: {rendered.stdout.strip()} {rendered.stderr.strip()}")

    if failures:
        raise AssertionError(f"{len(failures)} check(s) failed: " + "; ".join(failures))


if __name__ == "__main__":
    # A SIGTERM (ctest's timeout, a CI cancel) unwinds through the cleanup like a failure.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("FAILED: terminated"))
    try:
        main(sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "build", "daemon", "kpulse"))
    except Skip as skip:
        if os.environ.get("CI") == "true":
            print(f"FAIL: skipped under CI: {skip}")
            sys.exit(1)
        print(f"SKIP: {skip}")
        sys.exit(77)
    except AssertionError as failure:
        print(f"FAILED: {failure}")
        sys.exit(1)
    print("PASSED")
