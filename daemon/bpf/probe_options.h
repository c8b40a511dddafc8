#pragma once

// What each probe's kernel side is built from: hooks, map sizes and in-kernel filters. A change
// to any of these needs the probe loaded again (its maps, and so its counters, start over); the
// config structs (config/config.h) add only export-side settings, which a scrape applies.
// Plain values with ==, so a reload can tell what changed. No dependencies on purpose: config/
// and bpf/ both include it.

#include <cstddef>
#include <cstdint>

namespace kpulse {

/// Which kernel hook the TCP retransmit probe attaches to. YAML: auto | tp_btf | tracepoint.
enum class RetransHook {
  kAuto,   // Probe the kernel at load time: tp_btf where it works, else the classic tracepoint.
  kTpBtf,  // BTF-typed raw tracepoint only (no tracefs needed).
  kTracepoint,  // Classic tracepoint only (needs tracefs mounted).
};

/// How much of a flow's addressing becomes labels. YAML: full | remote | none. Kernel-side: the
/// BPF program leaves out what is not labelled, so one flow map entry serves one series.
enum class FlowLabels {
  kFull,    // Local and remote address and port.
  kRemote,  // Remote address and port only.
  kNone,    // No per-flow series; per-cgroup and node totals only.
};

/// How the scheduler probes measure. YAML: auto | sched_info | wakeup.
enum class SchedHook {
  kAuto,       // sched_info where the kernel has it (and task storage), else wakeup.
  kSchedInfo,  // One tp_btf/sched_switch program reading the kernel's sched_info accounting.
  kWakeup,     // raw_tp sched_wakeup/_new + sched_switch with a tid-keyed timestamp map.
};

/// The TCP retransmit probe's kernel side (YAML `probes.tcp_retransmit`).
struct RetransProbeOptions {
  RetransHook hook = RetransHook::kAuto;
  uint32_t max_flows = 16384;   // 16..1048576: entries of the BPF LRU flow map.
  uint32_t max_cgroups = 4096;  // 16..1048576: entries of the per-cgroup map.
  FlowLabels flow_labels = FlowLabels::kFull;
  bool fold_ephemeral_ports = true;  // Ports in the ephemeral range become one label value.
  bool operator==(const RetransProbeOptions&) const = default;
};

/// The run-queue latency probe's kernel side (YAML `probes.runqueue_latency`).
struct RunqueueProbeOptions {
  bool enabled = true;
  uint32_t max_cgroups = 4096;  // 16..1048576: histogram entries (one per cgroup, x CPUs if per_cpu).
  uint32_t max_tasks = 65536;   // 1024..4194304: runnable-task timestamps (wakeup hook only).
  bool per_cpu = false;         // Add a `cpu` label: one histogram per cgroup and CPU.
  bool operator==(const RunqueueProbeOptions&) const = default;
};

/// Off-CPU stacks (YAML `probes.offcpu.stacks`): blocked time by kernel (+ user) stack, served
/// as folded stacks at GET /debug/offcpu. Opt-in.
struct OffcpuStackOptions {
  bool enabled = false;
  bool user = false;  // also the user stack: a frame-pointer walk at every blocking switch-out
  uint32_t min_block_us = 1000;  // 0..60000000: shorter blocks get no stack entry.
  uint32_t max_stacks = 16384;   // 16..1048576: distinct stack traces kept.
  uint32_t max_entries = 16384;  // 16..1048576: (cgroup, process, state, stacks) aggregates.
  bool operator==(const OffcpuStackOptions&) const = default;
};

/// The off-CPU probe's kernel side (YAML `probes.offcpu`).
struct OffcpuProbeOptions {
  bool enabled = true;
  uint32_t min_block_us = 0;    // 0..60000000: shorter blocks are not counted at all.
  uint32_t max_cgroups = 4096;  // 16..1048576: (cgroup, state) histograms.
  uint32_t max_tasks = 65536;   // 1024..4194304: blocked threads tracked at once (wakeup hook).
  OffcpuStackOptions stacks;
  bool operator==(const OffcpuProbeOptions&) const = default;
};

/// Memory per probe for per-CPU histograms (see bpf/sched/sched.h): the first cgroups to get a
/// slot get per-CPU histograms, updated without atomic adds, while they fit in it.
inline constexpr size_t kDefaultHotHistogramBytes = size_t{8} << 20;

/// The scheduler object's kernel side: one BPF object serves both scheduler probes (one
/// sched_switch program), so either may be disabled (not both) and they share one hook.
struct SchedProbeOptions {
  RunqueueProbeOptions runqueue;
  OffcpuProbeOptions offcpu;
  SchedHook hook = SchedHook::kAuto;
  size_t hot_histogram_bytes = kDefaultHotHistogramBytes;  // 0: every histogram shared
  bool operator==(const SchedProbeOptions&) const = default;
};

}  // namespace kpulse
