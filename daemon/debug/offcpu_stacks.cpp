#include "debug/offcpu_stacks.h"

#include <spdlog/spdlog.h>

#include <charconv>
#include <condition_variable>
#include <fstream>
#include <mutex>
#include <thread>

#include "collect/offcpu_collector.h"  // OffcpuStateName
#include "symbolize/kernel_symbols.h"
#include "symbolize/user_symbols.h"

namespace kpulse {

namespace {

constexpr int kMaxWindowSeconds = 60;

// ';' separates frames and the last space separates the value: neither may appear in a frame.
std::string FrameText(std::string name) {
  for (char& c : name) {
    if (c == ';') c = ':';
    if (c == '\n') c = ' ';
  }
  return name;
}

std::string ProcessName(uint32_t tgid) {
  std::ifstream file("/proc/" + std::to_string(tgid) + "/comm");
  std::string comm;
  if (std::getline(file, comm) && !comm.empty()) return comm;
  return "[pid " + std::to_string(tgid) + "]";  // exited since
}

// Innermost frames that say nothing about where a thread blocked: kpulse's own program, the
// tracepoint glue that called it, and the scheduler's entry, which the wakeup hook's walk at the
// switch-out starts in (the sched_info hook's walk of a sleeping task starts past them).
bool IsProbeFrame(const std::string& name) {
  return name.ends_with(" [bpf]") || name.starts_with("bpf_trace_run") ||
         name.starts_with("__bpf_trace_") || name.starts_with("bpf_prog_") ||
         name.starts_with("__traceiter_") || name == "__schedule" || name == "schedule";
}

HttpResponse TextResponse(unsigned status, std::string body) {
  return HttpResponse{status, "text/plain; charset=utf-8", std::move(body)};
}

using StackTotals =
    std::map<std::tuple<uint64_t, uint32_t, uint32_t, uint64_t, uint64_t>, OffcpuStack>;

StackTotals ByKey(std::vector<OffcpuStack> stacks) {
  StackTotals totals;
  for (auto& stack : stacks) {
    const auto& k = stack.key;
    totals[{k.cgroup_id, k.tgid, k.state, k.kstack, k.ustack}] = std::move(stack);
  }
  return totals;
}

}  // namespace

FoldedStacks FoldOffcpuStacks(
    const std::vector<OffcpuStack>& stacks,
    const std::function<std::string(uint32_t tgid)>& process_name,
    const std::function<std::vector<std::string>(const std::vector<uint64_t>&)>& resolve_kernel,
    const std::function<std::vector<std::string>(uint32_t tgid, const std::vector<uint64_t>&)>&
        resolve_user) {
  FoldedStacks folded;
  for (const OffcpuStack& stack : stacks) {
    std::string line = FrameText(process_name(stack.key.tgid));
    const std::vector<std::string> user = resolve_user(stack.key.tgid, stack.user_frames);
    for (auto it = user.rbegin(); it != user.rend(); ++it) {
      line += ';';
      line += FrameText(*it);
    }
    std::vector<std::string> kernel = resolve_kernel(stack.kernel_frames);
    // Innermost first: drop the frames of the probe itself.
    auto own = kernel.begin();
    while (own != kernel.end() && IsProbeFrame(*own)) ++own;
    kernel.erase(kernel.begin(), own);
    for (auto it = kernel.rbegin(); it != kernel.rend(); ++it) {
      line += ';';
      line += FrameText(*it);
    }
    folded[line] += stack.value.blocked_ns / 1000;
  }
  return folded;
}

OffcpuStacksEndpoint::OffcpuStacksEndpoint(const OffcpuSource& source, bool stacks_enabled,
                                           std::shared_ptr<const KernelSymbols> kernel_symbols,
                                           std::shared_ptr<const CgroupLabeler> labeler)
    : source_(source),
      stacks_enabled_(stacks_enabled),
      labeler_(std::move(labeler)),
      kernel_symbols_(std::move(kernel_symbols)),
      user_symbols_(std::make_unique<UserSymbolizer>()) {}

OffcpuStacksEndpoint::~OffcpuStacksEndpoint() = default;

void OffcpuStacksEndpoint::SetLabeler(std::shared_ptr<const CgroupLabeler> labeler) {
  const std::lock_guard lock(labeler_mutex_);
  labeler_ = std::move(labeler);
}

HttpResponse OffcpuStacksEndpoint::Render(const HttpRequest& request) const {
  if (!stacks_enabled_) {
    return TextResponse(404, "off-CPU stacks are off: set probes.offcpu.stacks.enabled: true\n");
  }
  std::optional<std::string> cgroup_filter;
  std::optional<uint32_t> state_filter;
  int seconds = 0;
  for (const auto& [name, value] : request.query) {
    if (name == "cgroup") {
      cgroup_filter = value;
    } else if (name == "state") {
      for (uint32_t state = 0; state < OFFCPU_STATE_MAX; ++state) {
        if (OffcpuStateName(state) == value) state_filter = state;
      }
      if (!state_filter) {
        return TextResponse(400, "state must be one of sleep, disk, idle, other\n");
      }
    } else if (name == "seconds") {
      const auto [end, ec] = std::from_chars(value.data(), value.data() + value.size(), seconds);
      if (ec != std::errc() || end != value.data() + value.size() || seconds < 1 ||
          seconds > kMaxWindowSeconds) {
        return TextResponse(400, "seconds must be an integer from 1 to 60\n");
      }
    } else {
      return TextResponse(400,
                          "unknown parameter '" + name + "' (known: cgroup, state, seconds)\n");
    }
  }

  auto first = source_.OffcpuStacksNow();
  if (!first) return TextResponse(500, first.error() + "\n");
  std::vector<OffcpuStack> stacks = std::move(*first);
  if (seconds > 0) {
    // A window: what accumulated during it (kernel counters are never reset).
    StackTotals before = ByKey(std::move(stacks));
    // Cut short when the server stops (SIGTERM): the daemon exits within 2 s, not after the window.
    std::mutex mu;
    std::condition_variable_any wake;
    std::unique_lock lock(mu);
    if (wake.wait_for(lock, request.stop, std::chrono::seconds(seconds), [] { return false; }),
        request.stop.stop_requested()) {
      return TextResponse(503, "kpulse is stopping; the window was cut short\n");
    }
    auto second = source_.OffcpuStacksNow();
    if (!second) return TextResponse(500, second.error() + "\n");
    stacks.clear();
    for (auto& stack : *second) {
      const auto& k = stack.key;
      auto it = before.find({k.cgroup_id, k.tgid, k.state, k.kstack, k.ustack});
      if (it != before.end()) {
        stack.value.blocked_ns -= std::min(stack.value.blocked_ns, it->second.value.blocked_ns);
        stack.value.count -= std::min(stack.value.count, it->second.value.count);
      }
      if (stack.value.blocked_ns > 0) stacks.push_back(std::move(stack));
    }
  }

  std::shared_ptr<const CgroupLabeler> labeler;
  {
    const std::lock_guard lock(labeler_mutex_);
    labeler = labeler_;
  }
  std::vector<OffcpuStack> selected;
  for (auto& stack : stacks) {
    if (state_filter && stack.key.state != *state_filter) continue;
    if (cgroup_filter) {
      const auto labels = labeler->LabelsOf(stack.key.cgroup_id);
      if (!labels || labels->cgroup != *cgroup_filter) continue;
    }
    selected.push_back(std::move(stack));
  }

  const FoldedStacks folded = FoldOffcpuStacks(
      selected, ProcessName,
      [this](const std::vector<uint64_t>& frames) {
        std::vector<std::string> names;
        for (uint64_t ip : frames) {
          names.push_back(kernel_symbols_ ? kernel_symbols_->Resolve(ip) : "[unknown]");
        }
        return names;
      },
      [this](uint32_t tgid, const std::vector<uint64_t>& frames) {
        return user_symbols_->Resolve(static_cast<pid_t>(tgid), frames);
      });
  std::string body;
  for (const auto& [line, micros] : folded) {
    if (micros == 0) continue;
    body += line + " " + std::to_string(micros) + "\n";
  }
  return TextResponse(200, std::move(body));
}

}  // namespace kpulse
