#include "bpf/sched_probe.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "bpf/map_reader.h"
#include "bpf/bpf_skeleton.h"
#include "sched.skel.h"

namespace kpulse {

namespace {

std::string Errno(int err) { return std::strerror(err < 0 ? -err : err); }

// Slots that get per-CPU histograms within `budget` bytes; the rest share one histogram each.
uint32_t HotSlots(uint32_t slots, size_t bytes_per_slot, int cpus, size_t budget) {
  const size_t fit = budget / (bytes_per_slot * static_cast<size_t>(cpus));
  return static_cast<uint32_t>(std::min<size_t>(slots, fit));
}

}  // namespace

std::string_view ToString(SchedVariant variant) {
  return variant == SchedVariant::kSchedInfo ? "sched_info" : "wakeup";
}

tl::expected<SchedVariant, std::string> ChooseSchedVariant(SchedHook hook,
                                                           const SchedKernelFeatures& kernel) {
  if (hook == SchedHook::kWakeup) return SchedVariant::kWakeup;
  const bool sched_info = kernel.sched_info && kernel.task_storage && kernel.tp_btf;
  if (sched_info) return SchedVariant::kSchedInfo;
  if (hook == SchedHook::kSchedInfo) {
    std::string missing;
    if (!kernel.sched_info) missing += " sched_info accounting (CONFIG_SCHED_INFO);";
    if (!kernel.task_storage) missing += " task storage maps (5.11+);";
    if (!kernel.tp_btf) missing += " BTF-typed sched_switch;";
    missing.pop_back();
    return tl::unexpected("hook sched_info requested, but the kernel lacks" + missing);
  }
  return SchedVariant::kWakeup;
}

template <>
void SkeletonDeleter<sched_bpf>::operator()(sched_bpf* skeleton) const {
  sched_bpf__destroy(skeleton);
}

tl::expected<SchedProbe::Skeleton, BpfFailure> SchedProbe::LoadAndAttach(
    const SchedProbeOptions& options, SchedVariant variant) {
  const RunqueueProbeOptions& runq = options.runqueue;
  const OffcpuProbeOptions& offcpu = options.offcpu;
  Skeleton skeleton(sched_bpf__open());
  if (!skeleton) return Failed("opening the sched BPF object");

  const bool info = variant == SchedVariant::kSchedInfo;
  auto& progs = skeleton->progs;
  bpf_program__set_autoload(progs.sched_switch_info, info);
  bpf_program__set_autoload(progs.sched_wakeup_raw, !info);
  bpf_program__set_autoload(progs.sched_wakeup_new_raw, !info);
  bpf_program__set_autoload(progs.sched_switch_raw, !info);
  // Task storage may not exist on the kernels the wakeup variant is for.
  bpf_map__set_autocreate(skeleton->maps.sched_task_states, info);

  // One slot per cgroup serves both probes; each probe's array holds its own max_cgroups slots
  // (a cgroup beyond them goes to that probe's overflow).
  const uint32_t runq_slots = runq.enabled ? runq.max_cgroups : 1;
  const uint32_t offcpu_slots = offcpu.enabled ? offcpu.max_cgroups : 1;
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return Failed("counting CPUs", cpus);
  const uint32_t max_slots = std::max(runq_slots, offcpu_slots);  // one slot table for both
  auto& rodata = *skeleton->rodata;
  rodata.runq_enabled = runq.enabled;
  rodata.offcpu_enabled = offcpu.enabled;
  rodata.runq_slots = runq_slots;
  rodata.offcpu_slots = offcpu_slots;
  // per_cpu makes every run-queue histogram per-CPU already.
  const size_t budget = options.hot_histogram_bytes;
  rodata.runq_hot_slots =
      runq.enabled && !runq.per_cpu ? HotSlots(runq_slots, sizeof(sched_hist), cpus, budget) : 0;
  rodata.offcpu_hot_slots =
      offcpu.enabled ? HotSlots(offcpu_slots, OFFCPU_STATE_MAX * sizeof(sched_hist), cpus, budget)
                     : 0;
  const uint32_t runq_shared = std::max(runq_slots - rodata.runq_hot_slots, 1u);
  const uint32_t offcpu_shared = std::max(offcpu_slots - rodata.offcpu_hot_slots, 1u);
  rodata.offcpu_min_block_ns = uint64_t{offcpu.min_block_us} * 1000;
  rodata.stacks_enabled = offcpu.enabled && offcpu.stacks.enabled;
  rodata.user_stacks_enabled = rodata.stacks_enabled && offcpu.stacks.user;
  rodata.stack_min_block_ns = uint64_t{offcpu.stacks.min_block_us} * 1000;
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);  // task->start_time's clock
  rodata.task_epoch_ns = static_cast<uint64_t>(now.tv_sec) * 1000000000 +
                         static_cast<uint64_t>(now.tv_nsec);

  // Maps a configuration does not use still need a size: 1 entry.
  const bool stacks = rodata.stacks_enabled;
  const std::pair<bpf_map*, uint32_t> sizes[] = {
      {skeleton->maps.cgroup_slots, max_slots},
      {skeleton->maps.slot_owner, max_slots},
      {skeleton->maps.free_slots, max_slots},
      {skeleton->maps.runq_hists, runq_shared},
      {skeleton->maps.runq_hot_hists, std::max(rodata.runq_hot_slots, 1u)},
      {skeleton->maps.runq_start, runq.enabled && !info ? runq.max_tasks : 1},
      {skeleton->maps.offcpu_hists, offcpu_shared * OFFCPU_STATE_MAX},
      {skeleton->maps.offcpu_hot_hists, std::max(rodata.offcpu_hot_slots, 1u) * OFFCPU_STATE_MAX},
      {skeleton->maps.offcpu_start, offcpu.enabled && !info ? offcpu.max_tasks : 1},
      {skeleton->maps.offcpu_stack_frames, stacks ? offcpu.stacks.max_stacks : 1},
      {skeleton->maps.offcpu_stacks, stacks ? offcpu.stacks.max_entries : 1},
  };
  for (const auto& [map, entries] : sizes) {
    if (int err = bpf_map__set_max_entries(map, entries); err != 0) {
      return Failed("sizing " + std::string(bpf_map__name(map)), err);
    }
  }
  if (runq.per_cpu) {
    if (int err = bpf_map__set_type(skeleton->maps.runq_hists, BPF_MAP_TYPE_PERCPU_ARRAY);
        err != 0) {
      return Failed("making runq_hists per-CPU", err);
    }
    // Every cgroup's histogram then has a copy per possible CPU, outside the per-CPU budget.
    const double mib = static_cast<double>(runq_slots) * cpus * sizeof(sched_hist) / (1 << 20);
    if (mib > static_cast<double>(kDefaultHotHistogramBytes) / (1 << 20)) {
      spdlog::warn(
          "probes.runqueue_latency.per_cpu: {} cgroups x {} CPUs take {:.0f} MiB of kernel "
          "memory; lower max_cgroups if that is too much",
          runq_slots, cpus, mib);
    }
  }
  if (int err = sched_bpf__load(skeleton.get()); err != 0) {
    return Failed("loading the sched BPF programs (" + std::string(ToString(variant)) + ")", err);
  }
  // Every slot starts free, the lowest (per-CPU) on top of the stack.
  const int free_fd = bpf_map__fd(skeleton->maps.free_slots);
  for (uint32_t slot = max_slots; slot-- > 0;) {
    if (bpf_map_update_elem(free_fd, nullptr, &slot, BPF_ANY) != 0) {
      return Failed("filling free_slots");
    }
  }
  if (int err = sched_bpf__attach(skeleton.get()); err != 0) {
    return Failed("attaching the sched BPF programs (" + std::string(ToString(variant)) + ")", err);
  }
  return skeleton;
}

std::unique_ptr<SchedProbe> SchedProbe::Start(const SchedProbeOptions& options) {
  if (!options.runqueue.enabled && !options.offcpu.enabled) {
    throw std::logic_error("SchedProbe::Start with both scheduler probes disabled");
  }
  auto chosen = ChooseSchedVariant(options.hook, ProbeSchedKernelFeatures());
  if (!chosen) throw ProbeError("scheduler probes", BpfFailure{chosen.error()});
  const bool may_fall_back =
      options.hook == SchedHook::kAuto && *chosen == SchedVariant::kSchedInfo;
  auto [variant, skeleton] = LoadWithFallback<SchedVariant, sched_bpf>(
      "scheduler probes", *chosen,
      may_fall_back ? std::optional(SchedVariant::kWakeup) : std::nullopt, "the wakeup hooks",
      [&options](SchedVariant v) { return LoadAndAttach(options, v); });
  spdlog::info(
      "scheduler probes ({}{}{}) attached via {}; per-CPU histograms for the first {} (run "
      "queue) and {} (off-CPU) cgroups",
      options.runqueue.enabled ? "runqueue_latency" : "",
      options.runqueue.enabled && options.offcpu.enabled ? ", " : "",
      options.offcpu.enabled ? "offcpu" : "", ToString(variant), skeleton->rodata->runq_hot_slots,
      skeleton->rodata->offcpu_hot_slots);
  return std::unique_ptr<SchedProbe>(new SchedProbe(std::move(skeleton), variant, options));
}

SchedProbe::SchedProbe(Skeleton skeleton, SchedVariant variant, SchedProbeOptions options)
    : skeleton_(std::move(skeleton)), variant_(variant), options_(std::move(options)) {}

SchedProbe::~SchedProbe() = default;

const bpf_object* SchedProbe::object() const { return skeleton_->obj; }

tl::expected<std::vector<std::pair<uint64_t, uint32_t>>, std::string> SchedProbe::OwnedSlots()
    const {
  const bpf_map* map = skeleton_->maps.slot_owner;
  std::vector<std::byte> values;
  auto read = ReadArrayPrefixBytes(bpf_map__fd(map), "slot_owner", bpf_map__max_entries(map),
                                   sizeof(uint64_t), values);
  if (!read) return tl::unexpected(read.error());
  std::vector<std::pair<uint64_t, uint32_t>> owned;
  for (uint32_t slot = 0; slot < *read; ++slot) {
    uint64_t owner = 0;
    std::memcpy(&owner, values.data() + slot * sizeof(uint64_t), sizeof(owner));
    if (owner != 0) owned.emplace_back(owner, slot);
  }
  return owned;
}

tl::expected<std::vector<std::pair<uint64_t, uint32_t>>, std::string> SchedProbe::CountingSlots()
    const {
  auto slots = OwnedSlots();
  if (!slots) return slots;
  for (const RetiringSlot& retiring : retiring_) slots->emplace_back(retiring.cgroup_id, retiring.slot);
  return slots;
}

namespace {

/// One probe's histogram arrays: slots below `hot` in the per-CPU `hot_map`, the others in
/// `shared_map` from index 0 = slot `hot` on (itself per-CPU with the per_cpu option).
struct SlotHistArrays {
  const bpf_map* hot_map;
  const bpf_map* shared_map;
  uint32_t hot;
  uint32_t capacity;  // slots in both: the probe's max_cgroups
  uint32_t entries_per_slot;
};

/// Calls add(cgroup_id, entry_in_slot, cpu, hist) for every histogram with an observation: a
/// hot one summed over CPUs (cpu = kAllCpus), a shared one per CPU when its array is per-CPU.
/// Returns the number of cgroups with a slot in these arrays.
template <typename Add>
tl::expected<uint32_t, std::string> ReadSlotHists(
    const SlotHistArrays& arrays, const std::vector<std::pair<uint64_t, uint32_t>>& slots,
    Add add) {
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return tl::unexpected("counting CPUs failed: " + Errno(cpus));
  const uint32_t per_slot = arrays.entries_per_slot;
  uint32_t hot_used = 0, shared_used = 0, cgroups = 0;
  for (const auto& [cgroup_id, slot] : slots) {
    if (slot >= arrays.capacity) continue;
    ++cgroups;
    if (slot < arrays.hot) {
      hot_used = std::max(hot_used, slot + 1);
    } else {
      shared_used = std::max(shared_used, slot - arrays.hot + 1);
    }
  }
  const bool shared_per_cpu = bpf_map__type(arrays.shared_map) == BPF_MAP_TYPE_PERCPU_ARRAY;
  const int shared_cpus = shared_per_cpu ? cpus : 1;
  std::vector<std::byte> hot_values, shared_values;
  const size_t hot_entry = sizeof(sched_hist) * static_cast<size_t>(cpus);
  const size_t shared_entry = sizeof(sched_hist) * static_cast<size_t>(shared_cpus);
  auto read = ReadArrayPrefixBytes(bpf_map__fd(arrays.hot_map), bpf_map__name(arrays.hot_map),
                                   hot_used * per_slot, hot_entry, hot_values);
  if (!read) return tl::unexpected(read.error());
  read = ReadArrayPrefixBytes(bpf_map__fd(arrays.shared_map), bpf_map__name(arrays.shared_map),
                              shared_used * per_slot, shared_entry, shared_values);
  if (!read) return tl::unexpected(read.error());
  auto hist_at = [](const std::byte* value, int cpu) {
    sched_hist hist;
    std::memcpy(&hist, value + static_cast<size_t>(cpu) * sizeof(sched_hist), sizeof(hist));
    return hist;
  };
  for (const auto& [cgroup_id, slot] : slots) {
    if (slot >= arrays.capacity) continue;
    for (uint32_t entry = 0; entry < per_slot; ++entry) {
      const uint32_t index = sched_hist_index(slot, arrays.hot, per_slot, entry);
      if (slot < arrays.hot) {
        const std::byte* value = hot_values.data() + index * hot_entry;
        sched_hist sum{};
        for (int cpu = 0; cpu < cpus; ++cpu) AddHist(sum, hist_at(value, cpu));
        if (HistCount(sum) != 0) add(cgroup_id, entry, kAllCpus, sum);
        continue;
      }
      const std::byte* value = shared_values.data() + index * shared_entry;
      for (int cpu = 0; cpu < shared_cpus; ++cpu) {
        const sched_hist hist = hist_at(value, cpu);
        if (HistCount(hist) == 0) continue;
        add(cgroup_id, entry, shared_per_cpu ? static_cast<uint32_t>(cpu) : kAllCpus, hist);
      }
    }
  }
  return cgroups;
}

}  // namespace

tl::expected<RunqueueSnapshot, std::string> SchedProbe::RunqueueSnapshotNow() const {
  std::lock_guard lock(mu_);
  RunqueueSnapshot snapshot;
  const auto& maps = skeleton_->maps;
  auto totals = ReadPerCpuValue<sched_totals>(bpf_map__fd(maps.sched_totals), "sched_totals", 0,
                                              [](sched_totals& sum, const sched_totals& cpu) {
                                                AddHist(sum.runq_overflow, cpu.runq_overflow);
                                                sum.runq_start_drops += cpu.runq_start_drops;
                                              });
  if (!totals) return tl::unexpected(totals.error());
  snapshot.overflow = totals->runq_overflow;
  snapshot.start_drops = totals->runq_start_drops;

  auto slots = CountingSlots();
  if (!slots) return tl::unexpected(slots.error());
  const SlotHistArrays arrays{maps.runq_hot_hists, maps.runq_hists,
                              skeleton_->rodata->runq_hot_slots, options_.runqueue.max_cgroups, 1};
  auto cgroups = ReadSlotHists(
      arrays, *slots, [&](uint64_t cgroup_id, uint32_t, uint32_t cpu, const sched_hist& hist) {
        snapshot.hists.push_back({RunqueueKey{cgroup_id, cpu}, hist});
      });
  if (!cgroups) return tl::unexpected(cgroups.error());
  snapshot.cgroups = *cgroups;
  snapshot.capacity = options_.runqueue.max_cgroups;
  snapshot.retired = std::exchange(runq_retired_, {});
  return snapshot;
}

namespace {

template <typename Value>
tl::expected<std::vector<uint32_t>, std::string> MapTids(const bpf_map* map) {
  auto entries =
      ReadHashMap<__u32, Value>(bpf_map__fd(map), bpf_map__name(map), bpf_map__max_entries(map));
  if (!entries) return tl::unexpected(entries.error());
  std::vector<uint32_t> tids;
  for (const auto& entry : *entries) tids.push_back(entry.first);
  return tids;
}

}  // namespace

tl::expected<std::vector<uint32_t>, std::string> SchedProbe::StartMapTids() const {
  if (variant_ != SchedVariant::kWakeup) return std::vector<uint32_t>{};
  return MapTids<__u64>(skeleton_->maps.runq_start);
}

tl::expected<std::vector<uint32_t>, std::string> SchedProbe::OffcpuStartMapTids() const {
  if (variant_ != SchedVariant::kWakeup) return std::vector<uint32_t>{};
  return MapTids<offcpu_start>(skeleton_->maps.offcpu_start);
}

tl::expected<OffcpuSnapshot, std::string> SchedProbe::OffcpuSnapshotNow() const {
  std::lock_guard lock(mu_);
  OffcpuSnapshot snapshot;
  const auto& maps = skeleton_->maps;
  auto totals = ReadPerCpuValue<sched_totals>(
      bpf_map__fd(maps.sched_totals), "sched_totals", 0,
      [](sched_totals& sum, const sched_totals& cpu) {
        for (int state = 0; state < OFFCPU_STATE_MAX; ++state) {
          AddHist(sum.offcpu_overflow[state], cpu.offcpu_overflow[state]);
        }
        sum.offcpu_start_drops += cpu.offcpu_start_drops;
        sum.stack_drops += cpu.stack_drops;
      });
  if (!totals) return tl::unexpected(totals.error());
  std::copy(std::begin(totals->offcpu_overflow), std::end(totals->offcpu_overflow),
            snapshot.overflow.begin());
  snapshot.start_drops = totals->offcpu_start_drops;
  snapshot.stack_drops = totals->stack_drops;
  auto slots = CountingSlots();
  if (!slots) return tl::unexpected(slots.error());
  const SlotHistArrays arrays{maps.offcpu_hot_hists, maps.offcpu_hists,
                              skeleton_->rodata->offcpu_hot_slots, options_.offcpu.max_cgroups,
                              OFFCPU_STATE_MAX};
  auto cgroups = ReadSlotHists(
      arrays, *slots, [&](uint64_t cgroup_id, uint32_t state, uint32_t, const sched_hist& hist) {
        snapshot.hists.push_back({OffcpuKey{cgroup_id, state}, hist});
      });
  if (!cgroups) return tl::unexpected(cgroups.error());
  snapshot.cgroups = *cgroups;
  snapshot.capacity = options_.offcpu.max_cgroups;
  snapshot.retired = std::exchange(offcpu_retired_, {});
  return snapshot;
}

tl::expected<std::vector<OffcpuStack>, std::string> SchedProbe::OffcpuStacksNow() const {
  std::vector<OffcpuStack> stacks;
  if (!skeleton_->rodata->stacks_enabled) return stacks;
  const auto& maps = skeleton_->maps;
  auto entries = ReadHashMap<offcpu_stack_key, offcpu_stack_value>(
      bpf_map__fd(maps.offcpu_stacks), "offcpu_stacks", bpf_map__max_entries(maps.offcpu_stacks));
  if (!entries) return tl::unexpected(entries.error());
  const int frames_fd = bpf_map__fd(maps.offcpu_stack_frames);
  stack_frames frames{};
  auto read_frames = [&](uint64_t hash) {
    std::vector<uint64_t> out;
    if (hash == 0 || bpf_map_lookup_elem(frames_fd, &hash, &frames) != 0) return out;
    for (uint64_t ip : frames.ips) {
      if (ip == 0) break;
      out.push_back(ip);
    }
    return out;
  };
  for (const auto& [key, value] : *entries) {
    OffcpuStack stack;
    stack.key = key;
    stack.value = value;
    stack.kernel_frames = read_frames(key.kstack);
    stack.user_frames = read_frames(key.ustack);
    stacks.push_back(std::move(stack));
  }
  return stacks;
}

namespace {

/// Appends `record` to `records`; past kMaxRetiredRecords, all of them are merged into records
/// of cgroup id 0 (one per sub-key), so nobody scraping cannot grow memory without bound.
template <typename Key>
void AddRetired(std::vector<std::pair<Key, sched_hist>>& records, Key key, const sched_hist& hist) {
  records.emplace_back(key, hist);
  if (records.size() <= kMaxRetiredRecords) return;
  std::vector<std::pair<Key, sched_hist>> merged;
  for (auto& [record_key, record_hist] : records) {
    record_key.cgroup_id = 0;
    auto it = std::find_if(merged.begin(), merged.end(), [&](const auto& m) {
      return std::memcmp(&m.first, &record_key, sizeof(Key)) == 0;
    });
    if (it == merged.end()) {
      merged.emplace_back(record_key, record_hist);
    } else {
      AddHist(it->second, record_hist);
    }
  }
  records = std::move(merged);
}

/// Reads entry `index` of a histogram array (all CPUs' copies of a per-CPU one), then zeroes it.
tl::expected<std::vector<sched_hist>, std::string> TakeHistEntry(const bpf_map* map,
                                                                 uint32_t index) {
  const bool per_cpu = bpf_map__type(map) == BPF_MAP_TYPE_PERCPU_ARRAY;
  const int cpus = per_cpu ? libbpf_num_possible_cpus() : 1;
  if (cpus <= 0) return tl::unexpected("counting CPUs failed: " + Errno(cpus));
  std::vector<sched_hist> hists(static_cast<size_t>(cpus));  // 224 B: a multiple of 8
  const int fd = bpf_map__fd(map);
  if (bpf_map_lookup_elem(fd, &index, hists.data()) != 0) {
    return tl::unexpected(std::string("reading ") + bpf_map__name(map) + " failed: " +
                          Errno(errno));
  }
  const std::vector<sched_hist> zero(hists.size());
  if (bpf_map_update_elem(fd, &index, zero.data(), BPF_ANY) != 0) {
    return tl::unexpected(std::string("zeroing ") + bpf_map__name(map) + " failed: " +
                          Errno(errno));
  }
  return hists;
}

}  // namespace

tl::expected<void, std::string> SchedProbe::Recycle(const RetiringSlot& retiring) {
  const auto& maps = skeleton_->maps;
  const auto& rodata = *skeleton_->rodata;
  const uint32_t slot = retiring.slot;
  if (options_.runqueue.enabled && slot < options_.runqueue.max_cgroups) {
    const bool hot = slot < rodata.runq_hot_slots;
    auto hists = TakeHistEntry(hot ? maps.runq_hot_hists : maps.runq_hists,
                               sched_hist_index(slot, rodata.runq_hot_slots, 1, 0));
    if (!hists) return tl::unexpected(hists.error());
    // Hot copies and the plain shared array are summed; a per_cpu shared array keeps its CPUs.
    const bool keep_cpus = !hot && hists->size() > 1;
    sched_hist sum{};
    for (size_t cpu = 0; cpu < hists->size(); ++cpu) {
      if (keep_cpus) {
        if (HistCount((*hists)[cpu]) != 0) {
          AddRetired(runq_retired_, RunqueueKey{retiring.cgroup_id, static_cast<uint32_t>(cpu)},
                     (*hists)[cpu]);
        }
      } else {
        AddHist(sum, (*hists)[cpu]);
      }
    }
    if (!keep_cpus && HistCount(sum) != 0) {
      AddRetired(runq_retired_, RunqueueKey{retiring.cgroup_id, kAllCpus}, sum);
    }
  }
  if (options_.offcpu.enabled && slot < options_.offcpu.max_cgroups) {
    const bool hot = slot < rodata.offcpu_hot_slots;
    for (uint32_t state = 0; state < OFFCPU_STATE_MAX; ++state) {
      auto hists =
          TakeHistEntry(hot ? maps.offcpu_hot_hists : maps.offcpu_hists,
                        sched_hist_index(slot, rodata.offcpu_hot_slots, OFFCPU_STATE_MAX, state));
      if (!hists) return tl::unexpected(hists.error());
      sched_hist sum{};
      for (const sched_hist& hist : *hists) AddHist(sum, hist);
      if (HistCount(sum) != 0) {
        AddRetired(offcpu_retired_, OffcpuKey{retiring.cgroup_id, state}, sum);
      }
    }
  }
  if (bpf_map_update_elem(bpf_map__fd(maps.free_slots), nullptr, &slot, BPF_ANY) != 0) {
    return tl::unexpected("freeing slot " + std::to_string(slot) + " failed: " + Errno(errno));
  }
  return {};
}

tl::expected<uint32_t, std::string> SchedProbe::SweepStacks(
    const std::function<bool(uint64_t)>& gone) {
  if (!skeleton_->rodata->stacks_enabled) return 0;
  const bpf_map* map = skeleton_->maps.offcpu_stacks;
  const int fd = bpf_map__fd(map);
  auto entries = ReadHashMap<offcpu_stack_key, offcpu_stack_value>(fd, "offcpu_stacks",
                                                                   bpf_map__max_entries(map));
  if (!entries) return tl::unexpected(entries.error());
  uint32_t removed = 0;
  for (const auto& [key, value] : *entries) {
    if (!gone(key.cgroup_id)) continue;
    if (bpf_map_delete_elem(fd, &key) == 0) ++removed;
  }
  return removed;
}

tl::expected<SlotSweep, std::string> SchedProbe::SweepSlots(
    const std::function<bool(uint64_t)>& gone) {
  std::lock_guard lock(mu_);
  SlotSweep sweep;
  const auto& maps = skeleton_->maps;
  // Step 2 for the slots unpublished a sweep ago: every program that had looked them up then has
  // long returned, so their histograms are final.
  std::vector<RetiringSlot> retiring = std::exchange(retiring_, {});
  for (size_t i = 0; i < retiring.size(); ++i) {
    if (auto recycled = Recycle(retiring[i]); !recycled) {
      retiring_.insert(retiring_.end(), retiring.begin() + static_cast<long>(i), retiring.end());
      return tl::unexpected(recycled.error());
    }
    ++sweep.recycled;
  }
  // Step 1: unpublish the slots of removed cgroups.
  auto owned = OwnedSlots();
  if (!owned) return tl::unexpected(owned.error());
  const int slots_fd = bpf_map__fd(maps.cgroup_slots);
  const int owner_fd = bpf_map__fd(maps.slot_owner);
  for (const auto& [cgroup_id, slot] : *owned) {
    if (!gone(cgroup_id)) {
      ++sweep.owned;
      continue;
    }
    // Only the published slot: a slot whose owner a CPU set while it lost the race to publish
    // another one is given back by that CPU.
    uint32_t published = CGROUP_SLOT_NONE;
    if (bpf_map_lookup_elem(slots_fd, &cgroup_id, &published) != 0 || published != slot) {
      ++sweep.owned;
      continue;
    }
    if (bpf_map_delete_elem(slots_fd, &cgroup_id) != 0) {
      return tl::unexpected("unpublishing a cgroup slot failed: " + Errno(errno));
    }
    const uint64_t none = 0;
    if (bpf_map_update_elem(owner_fd, &slot, &none, BPF_ANY) != 0) {
      return tl::unexpected("clearing slot_owner failed: " + Errno(errno));
    }
    retiring_.push_back({cgroup_id, slot});
    ++sweep.unpublished;
  }
  return sweep;
}

}  // namespace kpulse
