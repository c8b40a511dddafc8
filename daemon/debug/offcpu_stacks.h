#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "bpf/sched_probe.h"
#include "cgroup/cgroup_labeler.h"
#include "http/http_server.h"

namespace kpulse {

class KernelSymbols;
class UserSymbolizer;

/// One line of folded-stack output before formatting: frames root first, blocked microseconds.
using FoldedStacks = std::map<std::string, uint64_t>;

/// Turns off-CPU stack aggregates into folded stacks, the input format of flamegraph.pl and
/// speedscope: "process;user frames (outermost first);kernel frames (outermost first) value",
/// value = blocked microseconds. Frames are resolved with `resolve_kernel` / `resolve_user`
/// (tgid, addresses innermost first -> names). The innermost kernel frames that belong to the
/// probe itself (its BPF program, bpf_trace_run*) are dropped. Lines with the same frames are
/// summed.
FoldedStacks FoldOffcpuStacks(
    const std::vector<OffcpuStack>& stacks,
    const std::function<std::string(uint32_t tgid)>& process_name,
    const std::function<std::vector<std::string>(const std::vector<uint64_t>&)>& resolve_kernel,
    const std::function<std::vector<std::string>(uint32_t tgid, const std::vector<uint64_t>&)>&
        resolve_user);

/// GET /debug/offcpu: folded off-CPU stacks. Query: `cgroup=` (the `cgroup` label value, as
/// /metrics shows it), `state=`
/// (sleep|disk|idle|other), `seconds=N` (1..60: the blocked time accumulated during the next N
/// seconds instead of since start). Thread-safe. Does not own `source`.
class OffcpuStacksEndpoint {
 public:
  /// `kernel_symbols`: /proc/kallsyms as read at start-up, while CAP_SYSLOG was held (null: the
  /// addresses were hidden, or stacks are off); shared by every endpoint a reload makes.
  OffcpuStacksEndpoint(const OffcpuSource& source, bool stacks_enabled,
                       std::shared_ptr<const KernelSymbols> kernel_symbols,
                       std::shared_ptr<const CgroupLabeler> labeler);
  ~OffcpuStacksEndpoint();
  HttpResponse Render(const HttpRequest& request) const;
  /// A reload's cgroup labels (for ?cgroup=); windows already running keep the old ones.
  void SetLabeler(std::shared_ptr<const CgroupLabeler> labeler);

 private:
  const OffcpuSource& source_;
  bool stacks_enabled_;
  mutable std::mutex labeler_mutex_;
  std::shared_ptr<const CgroupLabeler> labeler_;         // Guarded by labeler_mutex_.
  std::shared_ptr<const KernelSymbols> kernel_symbols_;  // null when kallsyms is hidden
  std::unique_ptr<UserSymbolizer> user_symbols_;
};

}  // namespace kpulse
