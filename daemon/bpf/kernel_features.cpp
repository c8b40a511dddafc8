#include "bpf/kernel_features.h"

#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>
#include <string>

namespace kpulse {

namespace {

struct BtfDeleter {
  void operator()(btf* types) const { btf__free(types); }
};
using BtfPtr = std::unique_ptr<btf, BtfDeleter>;

// The kernel's own BTF (/sys/kernel/btf/vmlinux), or null (logged once per probe).
BtfPtr LoadVmlinuxBtf(const char* probe) {
  BtfPtr vmlinux(btf__load_vmlinux_btf());
  if (!vmlinux) {
    spdlog::warn("{}: kernel BTF is not readable ({}); CO-RE programs will not load", probe,
                 std::strerror(errno));
  }
  return vmlinux;
}

// Number of arguments of a BTF-typed tracepoint (btf_trace_<name> is a typedef of a pointer to
// a function prototype whose first parameter is the context), or -1 when the kernel has none.
int TracepointArgCount(const btf* vmlinux, const char* tracepoint) {
  const std::string name = std::string("btf_trace_") + tracepoint;
  const int id = btf__find_by_name_kind(vmlinux, name.c_str(), BTF_KIND_TYPEDEF);
  if (id < 0) return -1;
  const btf_type* type = btf__type_by_id(vmlinux, static_cast<__u32>(id));
  type = type ? btf__type_by_id(vmlinux, type->type) : nullptr;  // the pointer
  type = type && btf_is_ptr(type) ? btf__type_by_id(vmlinux, type->type) : nullptr;
  if (!type || !btf_is_func_proto(type)) return -1;
  return btf_vlen(type) - 1;
}

bool StructHasMember(const btf* vmlinux, const char* type_name, const char* member) {
  const int id = btf__find_by_name_kind(vmlinux, type_name, BTF_KIND_STRUCT);
  if (id < 0) return false;
  const btf_type* type = btf__type_by_id(vmlinux, static_cast<__u32>(id));
  const btf_member* members = btf_members(type);
  for (unsigned i = 0; i < btf_vlen(type); ++i) {
    const char* name = btf__name_by_offset(vmlinux, members[i].name_off);
    if (name && std::strcmp(name, member) == 0) return true;
  }
  return false;
}

// CONFIG_SCHED_INFO can be compiled in yet idle on old kernels (it needed delayacct or
// schedstats before 5.14): require the calling thread's own pcount to be moving.
bool SchedInfoCounting() {
  std::ifstream file("/proc/thread-self/schedstat");
  unsigned long long exec_ns = 0, run_delay = 0, pcount = 0;
  return static_cast<bool>(file >> exec_ns >> run_delay >> pcount) && pcount > 0;
}

}  // namespace

RetransKernelFeatures ProbeRetransKernelFeatures() {
  RetransKernelFeatures features;
  const BtfPtr vmlinux = LoadVmlinuxBtf("tcp_retransmit");
  if (!vmlinux) return features;
  const int skb_args = TracepointArgCount(vmlinux.get(), "tcp_retransmit_skb");
  const int synack_args = TracepointArgCount(vmlinux.get(), "tcp_retransmit_synack");
  features.tp_btf = skb_args >= 2 && synack_args >= 2;
  features.reports_errors = skb_args >= 3;
  return features;
}

SchedKernelFeatures ProbeSchedKernelFeatures() {
  SchedKernelFeatures features;
  if (const BtfPtr vmlinux = LoadVmlinuxBtf("scheduler probes")) {
    // The off-CPU part also reads the run queue clock through task->se.cfs_rq->rq.
    features.sched_info = StructHasMember(vmlinux.get(), "task_struct", "sched_info") &&
                          StructHasMember(vmlinux.get(), "sched_entity", "cfs_rq") &&
                          StructHasMember(vmlinux.get(), "cfs_rq", "rq") && SchedInfoCounting();
    features.tp_btf =
        btf__find_by_name_kind(vmlinux.get(), "btf_trace_sched_switch", BTF_KIND_TYPEDEF) >= 0;
  }
  features.task_storage = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_TASK_STORAGE, nullptr) == 1;
  return features;
}

}  // namespace kpulse
