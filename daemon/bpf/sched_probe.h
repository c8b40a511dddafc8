#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <tl/expected.hpp>

#include "config/config.h"
#include "sched/sched.h"

struct bpf_object;
struct sched_bpf;

namespace kpulse {

// Layout checks against the BPF target's (see bpf/sched/sched.h).
static_assert(sizeof(sched_hist) == 8 * (SCHED_HIST_SLOTS + 2));
static_assert(sizeof(runq_key) == 16);
static_assert(sizeof(sched_task_state) == 16);
static_assert(sizeof(sched_totals) == sizeof(sched_hist) + 8);

/// Run-queue histograms at one instant, CPUs already summed.
struct RunqueueSnapshot {
  std::vector<std::pair<runq_key, sched_hist>> hists;  // per cgroup (and CPU with per_cpu)
  sched_hist overflow{};      // waits the full map could not hold (node-wide only)
  uint64_t start_drops = 0;   // wakeup hook: timestamps the start map could not hold
  uint32_t capacity = 0;      // runq_hists max_entries
};

/// Where the run-queue collector gets its data: the real probe, or a fake in unit tests.
class RunqueueSource {
 public:
  virtual ~RunqueueSource() = default;
  /// Reads the kernel maps. Thread-safe. Never resets anything.
  virtual tl::expected<RunqueueSnapshot, std::string> RunqueueSnapshotNow() const = 0;
};

/// The two ways the run-queue probe can measure (see bpf/sched/sched.bpf.c).
enum class SchedVariant { kSchedInfo, kWakeup };
std::string_view ToString(SchedVariant variant);

/// What the running kernel offers for the sched_info variant.
struct SchedKernelFeatures {
  bool sched_info = false;    // task_struct::sched_info in BTF and /proc/self/schedstat counting
  bool task_storage = false;  // BPF_MAP_TYPE_TASK_STORAGE
  bool tp_btf = false;        // BTF-typed sched_switch tracepoint
};
SchedKernelFeatures ProbeSchedKernelFeatures();
tl::expected<SchedVariant, std::string> ChooseSchedVariant(SchedHook hook,
                                                           const SchedKernelFeatures& kernel);

/// Owns the loaded and attached scheduler BPF object (skeleton, maps, links); destroying it
/// detaches everything. Not copyable or movable. Snapshot reads are thread-safe.
class SchedProbe final : public RunqueueSource {
 public:
  /// Opens, configures, loads, attaches. With hook auto a sched_info failure falls back to the
  /// wakeup hooks. Throws std::runtime_error with a one-line reason when nothing attaches.
  static std::unique_ptr<SchedProbe> Start(const RunqueueConfig& config);
  ~SchedProbe() override;
  SchedProbe(const SchedProbe&) = delete;
  SchedProbe& operator=(const SchedProbe&) = delete;

  tl::expected<RunqueueSnapshot, std::string> RunqueueSnapshotNow() const override;
  SchedVariant variant() const { return variant_; }
  std::string_view hook() const { return ToString(variant_); }
  /// Thread ids in the wakeup hook's start map (empty with sched_info): for leak checks.
  tl::expected<std::vector<uint32_t>, std::string> StartMapTids() const;
  const bpf_object* object() const;

 private:
  struct SkeletonDeleter {
    void operator()(sched_bpf* skeleton) const;
  };
  using Skeleton = std::unique_ptr<sched_bpf, SkeletonDeleter>;

  SchedProbe(Skeleton skeleton, SchedVariant variant);
  static tl::expected<Skeleton, std::string> LoadAndAttach(const RunqueueConfig& config,
                                                           SchedVariant variant);

  Skeleton skeleton_;
  SchedVariant variant_;
};

}  // namespace kpulse
