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

#include "bpf/probe_options.h"
#include "http/listen_address.h"

namespace kpulse {

/// Settings of the TCP retransmit probe (YAML `probes.tcp_retransmit`). The base is the kernel
/// side (a change reloads the probe); the fields here are applied by the next scrape.
struct RetransConfig : RetransProbeOptions {
  bool enabled = true;
  bool required = false;     // true: failure to load/attach this probe is fatal at start-up.
  bool netns_label = false;  // Add the socket's network namespace as a label.
};

/// Settings of the run-queue latency probe (YAML `probes.runqueue_latency`); the base is the
/// kernel side.
struct RunqueueConfig : RunqueueProbeOptions {
  bool required = false;
  SchedHook hook = SchedHook::kAuto;  // kernel-side, shared with offcpu (EffectiveSchedHook)
};

using OffcpuStacksConfig = OffcpuStackOptions;

/// Settings of the off-CPU (blocked time) probe (YAML `probes.offcpu`); the base is the kernel
/// side. It shares the sched_switch program with runqueue_latency, so both run the same hook:
/// when both are enabled and both name a hook other than auto, the hooks must be equal.
struct OffcpuConfig : OffcpuProbeOptions {
  bool required = false;
  SchedHook hook = SchedHook::kAuto;
};

/// Settings of the metrics HTTP server (YAML `http`).
struct HttpConfig {
  // Never empty and without duplicates (compared by text as written). Default: "127.0.0.1:10136".
  std::vector<ListenAddress> listen_addresses;
  uint32_t connection_timeout_seconds = 10;  // 1..300: idle/slow connections are closed after this.
  uint32_t max_connections = 512;            // 1..4096: concurrent connections accepted.
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

/// What the daemon keeps after every probe is attached (YAML `privileges`; docs/operations.md,
/// "Privileges"). Read at start-up only: dropped capabilities cannot come back.
struct PrivilegesConfig {
  bool drop = true;                 // drop every capability not needed after start-up
  std::string user;                 // switch to this user after attach (empty: keep the uid)
  bool cgroup_file_handles = true;  // keep CAP_DAC_READ_SEARCH for O(1) cgroup id -> path
  bool reload_attach = false;       // keep CAP_BPF + CAP_PERFMON: a reload may (re)load probes
  bool operator==(const PrivilegesConfig&) const = default;
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
  PrivilegesConfig privileges;      // YAML `privileges`.
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
