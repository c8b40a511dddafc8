#pragma once

// The daemon's configuration: a YAML file turned into a validated, immutable `Config` value.
//
// Error policy: parsing happens at start-up (and on reload), so failures are reported by throwing
// `ConfigError`. Its what() is always exactly one line,
//
//   FILE:LINE:COLUMN: KEY.PATH: reason
//
// with 1-based line and column, so that editors and CI logs can jump to the spot. Parsing stops at
// the first error. Any input, however malformed, produces either a Config or a ConfigError; nothing
// else escapes. docs/configuration.md lists every field and the rules checked here.

#include <spdlog/common.h>

#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "http/listen_address.h"

namespace kpulse {

/// Which kernel hook the TCP retransmit probe attaches to. YAML: auto | tp_btf | tracepoint.
enum class RetransHook {
  kAuto,   // Probe the kernel at load time: tp_btf where it works, else the classic tracepoint.
  kTpBtf,  // BTF-typed raw tracepoint only (no tracefs needed).
  kTracepoint,  // Classic tracepoint only (needs tracefs mounted).
};

/// How much of a flow's addressing becomes labels. YAML: full | remote | none.
enum class FlowLabels {
  kFull,    // Local and remote address and port.
  kRemote,  // Remote address and port only.
  kNone,    // No per-flow series; per-cgroup and node totals only.
};

/// Settings of the TCP retransmit probe (YAML `probes.tcp_retransmit`).
struct RetransConfig {
  bool enabled = true;
  bool required = false;  // true: failure to load/attach this probe is fatal at start-up.
  RetransHook hook = RetransHook::kAuto;
  uint32_t max_flows = 16384;   // 16..1048576: entries of the BPF LRU flow map.
  uint32_t max_cgroups = 4096;  // 16..1048576: entries of the per-cgroup map.
  FlowLabels flow_labels = FlowLabels::kFull;
  bool fold_ephemeral_ports = true;  // Ports in the ephemeral range become one label value.
  bool netns_label = false;          // Add the socket's network namespace as a label.
};

/// How the run-queue latency probe measures. YAML: auto | sched_info | wakeup.
enum class SchedHook {
  kAuto,       // sched_info where the kernel has it (and task storage), else wakeup.
  kSchedInfo,  // One tp_btf/sched_switch program reading the kernel's sched_info accounting.
  kWakeup,     // raw_tp sched_wakeup/_new + sched_switch with a tid-keyed timestamp map.
};

/// Settings of the run-queue latency probe (YAML `probes.runqueue_latency`).
struct RunqueueConfig {
  bool enabled = true;
  bool required = false;
  SchedHook hook = SchedHook::kAuto;
  uint32_t max_cgroups =
      4096;  // 16..1048576: histogram entries (one per cgroup, x CPUs if per_cpu).
  uint32_t max_tasks = 65536;  // 1024..4194304: runnable-task timestamps (wakeup hook only).
  bool per_cpu = false;        // Add a `cpu` label: one histogram per cgroup and CPU.
};

/// Off-CPU stacks (YAML `probes.offcpu.stacks`): blocked time by kernel (+ user) stack, served
/// as folded stacks at GET /debug/offcpu. Opt-in.
struct OffcpuStacksConfig {
  bool enabled = false;
  bool user = false;  // also the user stack: a frame-pointer walk at every blocking switch-out
  uint32_t min_block_us = 1000;  // 0..60000000: shorter blocks get no stack entry.
  uint32_t max_stacks = 16384;   // 16..1048576: distinct stack traces kept.
  uint32_t max_entries = 16384;  // 16..1048576: (cgroup, process, state, stacks) aggregates.
};

/// Settings of the off-CPU (blocked time) probe (YAML `probes.offcpu`). It shares the
/// sched_switch program with runqueue_latency, so both run the same hook: when both are enabled
/// and both name a hook other than auto, the hooks must be equal.
struct OffcpuConfig {
  bool enabled = true;
  bool required = false;
  SchedHook hook = SchedHook::kAuto;
  uint32_t min_block_us = 0;    // 0..60000000: shorter blocks are not counted at all.
  uint32_t max_cgroups = 4096;  // 16..1048576: (cgroup, state) histograms.
  uint32_t max_tasks = 65536;   // 1024..4194304: blocked threads tracked at once (wakeup hook).
  OffcpuStacksConfig stacks;
};

/// Settings of the metrics HTTP server (YAML `http`).
struct HttpConfig {
  // Never empty and without duplicates (compared by text as written). Default: "127.0.0.1:10136".
  std::vector<ListenAddress> listen_addresses;
  uint32_t connection_timeout_seconds = 10;  // 1..300: idle/slow connections are closed after this.
  uint32_t max_connections = 64;             // 1..4096: concurrent connections accepted.
};

/// Which cgroups get series of their own, and how often removed cgroups' kernel state is given
/// back (YAML `cgroups`). Export-side: applied at scrape time, the probes keep full detail.
struct CgroupsConfig {
  uint32_t depth = 0;              // 0..64: 0 keeps full paths; N reports a deeper cgroup as its
                                   // ancestor at depth N
  std::vector<std::string> allow;  // ECMAScript regexes on the (folded) path; empty: all allowed
  std::vector<std::string> deny;   // a match folds the cgroup into <other>
  uint32_t sweep_interval_seconds = 5;  // 1..3600: how often removed cgroups are swept
};

/// The ceiling on what Prometheus receives (YAML `series`).
struct SeriesConfig {
  uint32_t max_series_per_family = 5000;  // 16..10000000: the rest folds into <other>
  uint32_t idle_ttl_seconds = 600;        // 0..31536000: unchanged series leave /metrics (0: never)
};

/// A complete, validated configuration. A plain value: copy it, swap it on reload.
struct Config {
  std::string source;  // The file it came from (or the source name given to ParseConfig).
  spdlog::level::level_enum log_level = spdlog::level::info;  // YAML: trace|debug|info|warn|error.
  HttpConfig http;
  RetransConfig tcp_retransmit;     // YAML `probes.tcp_retransmit`.
  RunqueueConfig runqueue_latency;  // YAML `probes.runqueue_latency`.
  OffcpuConfig offcpu;              // YAML `probes.offcpu`.
  CgroupsConfig cgroups;            // YAML `cgroups`.
  SeriesConfig series;              // YAML `series`.
  // Kernel BPF run-time statistics (run_time_ns) while kpulse runs, for the
  // kpulse_bpf_program_* self-metrics. Costs two clock reads per program run. YAML `bpf_stats`.
  bool bpf_stats = false;
};

/// Thrown for any invalid or unreadable configuration; what() is one line (see the file comment).
class ConfigError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The hook the shared scheduler program runs for the enabled scheduler probes (auto unless one
/// of them names a hook; the parser rejects two different named hooks).
SchedHook EffectiveSchedHook(const Config& config);

/// The configuration used when a file sets nothing. `source` is empty.
Config DefaultConfig();

/// Parses and validates `yaml_text`. `source_name` prefixes error messages and becomes
/// Config::source. Every key is optional; an empty or comment-only document gives the defaults.
/// Throws ConfigError on the first problem found (in document order).
Config ParseConfig(const std::string& yaml_text, const std::string& source_name);

/// Reads `path` and parses it as ParseConfig(text, path) does. Throws ConfigError, also when the
/// file cannot be read ("cannot read config file 'PATH': <strerror>").
Config LoadConfigFile(const std::string& path);

/// The YAML spelling of each enum value ("auto", "tp_btf", ...).
std::string_view ToString(RetransHook hook);
std::string_view ToString(SchedHook hook);
std::string_view ToString(FlowLabels labels);

}  // namespace kpulse
