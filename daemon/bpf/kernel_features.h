#pragma once

// The one place kpulse asks the running kernel what it offers (BTF types, map types, accounting
// that is compiled in), never by version string. Each probe's variant choice is a pure function
// of these (Choose*Variant in its probe header), so it can be unit-tested with any kernel.

namespace kpulse {

/// What the running kernel's BTF says about the retransmit tracepoints.
struct RetransKernelFeatures {
  bool tp_btf = false;          // BTF-typed tracepoints exist for tcp_retransmit_{skb,synack}
  bool reports_errors = false;  // tcp_retransmit_skb carries `err` (6.17+), both hook kinds
};
RetransKernelFeatures ProbeRetransKernelFeatures();

/// What the running kernel offers for the scheduler probes' sched_info variant.
struct SchedKernelFeatures {
  bool sched_info = false;    // task_struct::sched_info in BTF and /proc/self/schedstat counting
  bool task_storage = false;  // BPF_MAP_TYPE_TASK_STORAGE
  bool tp_btf = false;        // BTF-typed sched_switch tracepoint
};
SchedKernelFeatures ProbeSchedKernelFeatures();

}  // namespace kpulse
