#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <utility>
#include <vector>

#include "bpf/bpf_skeleton.h"
#include "bpf/kernel_features.h"
#include "bpf/probe_options.h"
#include "sched/sched.h"

struct bpf_object;
struct sched_bpf;

namespace kpulse {

// Layout checks against the BPF target's (see bpf/sched/sched.h).
static_assert(sizeof(sched_hist) == 8 * (SCHED_HIST_SLOTS + 1));
static_assert(sizeof(offcpu_stack_key) == 32);
static_assert(sizeof(offcpu_stack_value) == 16);
static_assert(sizeof(sched_task_state) == 56);
static_assert(sizeof(offcpu_start) == 32);
static_assert(sizeof(sched_totals) == sizeof(sched_hist) * (1 + OFFCPU_STATE_MAX) + 3 * 8);

/// Adds histogram `one` into `sum`.
inline void AddHist(sched_hist& sum, const sched_hist& one) {
  for (int slot = 0; slot < SCHED_HIST_SLOTS; ++slot) sum.slots[slot] += one.slots[slot];
  sum.sum_ns += one.sum_ns;
}

/// Observations in a histogram: the kernel keeps no separate count (one atomic add fewer per
/// event), so it is the sum of the slots.
inline uint64_t HistCount(const sched_hist& hist) {
  uint64_t count = 0;
  for (uint64_t n : hist.slots) count += n;
  return count;
}

/// Histogram arithmetic for CgroupSeries (collect/cgroup_series.h).
inline void SeriesAdd(sched_hist& sum, const sched_hist& one) { AddHist(sum, one); }
inline uint64_t SeriesSignature(const sched_hist& hist) { return HistCount(hist) * 31 + hist.sum_ns; }

/// `cpu` of histograms summed over CPUs (the per_cpu option is off).
inline constexpr uint32_t kAllCpus = 0xffffffffu;

struct RunqueueKey {
  uint64_t cgroup_id;  // cgroup v2 id of the task that waited
  uint32_t cpu;        // CPU whose run queue it waited on, or kAllCpus
};

/// Run-queue histograms at one instant (histograms with no observation left out).
struct RunqueueSnapshot {
  std::vector<std::pair<RunqueueKey, sched_hist>> hists;  // per cgroup (and CPU with per_cpu)
  // Final histograms of removed cgroups whose slots were recycled since the previous snapshot:
  // each is reported once, here, and no longer in `hists`.
  std::vector<std::pair<RunqueueKey, sched_hist>> retired;
  sched_hist overflow{};     // waits of cgroups that got no slot (node-wide only)
  uint64_t start_drops = 0;  // wakeup hook: timestamps the start map could not hold
  uint32_t cgroups = 0;      // cgroups with a slot in runq_hists
  uint32_t capacity = 0;     // slots in runq_hists (max_cgroups)
};

/// Where the run-queue collector gets its data: the real probe, or a fake in unit tests.
class RunqueueSource {
 public:
  virtual ~RunqueueSource() = default;
  /// Reads the kernel maps. Thread-safe. Never resets anything.
  virtual tl::expected<RunqueueSnapshot, std::string> RunqueueSnapshotNow() const = 0;
};

struct OffcpuKey {
  uint64_t cgroup_id;  // cgroup v2 id of the task that blocked
  uint32_t state;      // enum offcpu_state
};

/// Off-CPU histograms at one instant (histograms with no observation left out).
struct OffcpuSnapshot {
  std::vector<std::pair<OffcpuKey, sched_hist>> hists;  // per (cgroup, state)
  std::vector<std::pair<OffcpuKey, sched_hist>> retired;  // as RunqueueSnapshot::retired
  std::array<sched_hist, OFFCPU_STATE_MAX> overflow{};  // blocks of cgroups that got no slot
  uint64_t start_drops = 0;  // wakeup hook: switch-outs the start map could not hold
  uint64_t stack_drops = 0;  // blocks without a stack entry (stack maps full)
  uint32_t cgroups = 0;      // cgroups with a slot in offcpu_hists
  uint32_t capacity = 0;     // cgroup slots in offcpu_hists (max_cgroups)
};

/// One aggregated off-CPU stack with its frames (innermost first, as the kernel records them).
struct OffcpuStack {
  offcpu_stack_key key{};
  offcpu_stack_value value{};
  std::vector<uint64_t> kernel_frames;
  std::vector<uint64_t> user_frames;
};

/// Where the off-CPU collector and /debug/offcpu get their data.
class OffcpuSource {
 public:
  virtual ~OffcpuSource() = default;
  virtual tl::expected<OffcpuSnapshot, std::string> OffcpuSnapshotNow() const = 0;
  /// The stack aggregates with their frames (empty when stacks are off). Thread-safe.
  virtual tl::expected<std::vector<OffcpuStack>, std::string> OffcpuStacksNow() const = 0;
};

/// The two ways the run-queue probe can measure (see bpf/sched/sched.bpf.c).
enum class SchedVariant { kSchedInfo, kWakeup };
std::string_view ToString(SchedVariant variant);

/// Picks the variant for `hook`; an error when `hook` forces sched_info and the kernel lacks it.
tl::expected<SchedVariant, std::string> ChooseSchedVariant(SchedHook hook,
                                                           const SchedKernelFeatures& kernel);

/// Slots the retired records of removed cgroups may pile up to between snapshots before they are
/// merged into one record with cgroup id 0 (memory stays bounded when nobody scrapes).
inline constexpr size_t kMaxRetiredRecords = 16384;

/// One pass of SchedProbe::SweepSlots.
struct SlotSweep {
  uint32_t unpublished = 0;  // slots of removed cgroups taken out of use (step 1)
  uint32_t recycled = 0;     // slots harvested and freed (step 2, of the previous sweep's)
  uint32_t owned = 0;        // slots owned by a cgroup after the sweep
};

/// Owns the loaded and attached scheduler BPF object (skeleton, maps, links) serving the
/// run-queue and off-CPU probes; destroying it detaches everything. Not copyable or movable.
/// Snapshot reads are thread-safe.
class SchedProbe final : public RunqueueSource, public OffcpuSource {
 public:
  /// Opens, configures, loads, attaches. With hook auto a sched_info failure falls back to the
  /// wakeup hooks. Throws ProbeError (one line, errno kept) when nothing attaches.
  static std::unique_ptr<SchedProbe> Start(const SchedProbeOptions& options);
  ~SchedProbe() override;
  SchedProbe(const SchedProbe&) = delete;
  SchedProbe& operator=(const SchedProbe&) = delete;

  tl::expected<RunqueueSnapshot, std::string> RunqueueSnapshotNow() const override;
  tl::expected<OffcpuSnapshot, std::string> OffcpuSnapshotNow() const override;
  tl::expected<std::vector<OffcpuStack>, std::string> OffcpuStacksNow() const override;
  SchedVariant variant() const { return variant_; }
  std::string_view hook() const { return ToString(variant_); }
  /// Gives back the slots of removed cgroups, in two steps a sweep apart (see bpf/sched/sched.h):
  /// the slots of cgroups for which `gone(cgroup_id)` is true are unpublished (no new event lands
  /// in them), and the slots unpublished by the previous sweep are harvested into the snapshots'
  /// `retired` records, zeroed and freed. Call it at intervals much longer than a BPF program
  /// runs (seconds). Thread-safe; serialised with the snapshots.
  tl::expected<SlotSweep, std::string> SweepSlots(const std::function<bool(uint64_t)>& gone);
  /// Removes the off-CPU stack aggregates of cgroups for which `gone(cgroup_id)` is true (they
  /// only serve /debug/offcpu, whose windows compare two reads). Returns how many were removed.
  tl::expected<uint32_t, std::string> SweepStacks(const std::function<bool(uint64_t)>& gone);
  /// cgroup id -> slot of every cgroup that owns one (for tests and the sweep).
  tl::expected<std::vector<std::pair<uint64_t, uint32_t>>, std::string> OwnedSlots() const;
  /// Thread ids in the wakeup hook's start maps (empty with sched_info): for leak checks.
  tl::expected<std::vector<uint32_t>, std::string> StartMapTids() const;
  tl::expected<std::vector<uint32_t>, std::string> OffcpuStartMapTids() const;
  const bpf_object* object() const;

 private:
  using Skeleton = SkeletonPtr<sched_bpf>;

  struct RetiringSlot {
    uint64_t cgroup_id;
    uint32_t slot;
  };

  SchedProbe(Skeleton skeleton, SchedVariant variant, SchedProbeOptions options);
  static tl::expected<Skeleton, BpfFailure> LoadAndAttach(const SchedProbeOptions& options,
                                                           SchedVariant variant);
  /// Owned slots plus the ones being retired: every slot whose histograms count. Requires mu_.
  tl::expected<std::vector<std::pair<uint64_t, uint32_t>>, std::string> CountingSlots() const;
  /// Step 2 of the sweep for one slot: its histograms into the retired records, then zeroed and
  /// freed. Requires mu_.
  tl::expected<void, std::string> Recycle(const RetiringSlot& retiring);

  Skeleton skeleton_;
  SchedVariant variant_;
  SchedProbeOptions options_;
  mutable std::mutex mu_;  // serialises sweeps with snapshots (which take the retired records)
  std::vector<RetiringSlot> retiring_;                          // Guarded by mu_.
  mutable std::vector<std::pair<RunqueueKey, sched_hist>> runq_retired_;  // Guarded by mu_.
  mutable std::vector<std::pair<OffcpuKey, sched_hist>> offcpu_retired_;  // Guarded by mu_.
};

}  // namespace kpulse
