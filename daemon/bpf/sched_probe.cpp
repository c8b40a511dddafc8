#include "bpf/sched_probe.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "bpf/map_reader.h"
#include "sched.skel.h"

namespace kpulse {

namespace {

std::string Errno(int err) { return std::strerror(err < 0 ? -err : err); }

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

// Slots that get per-CPU histograms within `budget` bytes; the rest share one histogram each.
uint32_t HotSlots(uint32_t slots, size_t bytes_per_slot, int cpus, size_t budget) {
  const size_t fit = budget / (bytes_per_slot * static_cast<size_t>(cpus));
  return static_cast<uint32_t>(std::min<size_t>(slots, fit));
}

}  // namespace

std::string_view ToString(SchedVariant variant) {
  return variant == SchedVariant::kSchedInfo ? "sched_info" : "wakeup";
}

SchedKernelFeatures ProbeSchedKernelFeatures() {
  SchedKernelFeatures features;
  if (btf* vmlinux = btf__load_vmlinux_btf()) {
    // The off-CPU part also reads the run queue clock through task->se.cfs_rq->rq.
    features.sched_info = StructHasMember(vmlinux, "task_struct", "sched_info") &&
                          StructHasMember(vmlinux, "sched_entity", "cfs_rq") &&
                          StructHasMember(vmlinux, "cfs_rq", "rq") && SchedInfoCounting();
    features.tp_btf =
        btf__find_by_name_kind(vmlinux, "btf_trace_sched_switch", BTF_KIND_TYPEDEF) >= 0;
    btf__free(vmlinux);
  }
  features.task_storage = libbpf_probe_bpf_map_type(BPF_MAP_TYPE_TASK_STORAGE, nullptr) == 1;
  return features;
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

void SchedProbe::SkeletonDeleter::operator()(sched_bpf* skeleton) const {
  sched_bpf__destroy(skeleton);
}

tl::expected<SchedProbe::Skeleton, std::string> SchedProbe::LoadAndAttach(
    const SchedProbeOptions& options, SchedVariant variant) {
  const RunqueueConfig& runq = options.runqueue;
  const OffcpuConfig& offcpu = options.offcpu;
  Skeleton skeleton(sched_bpf__open());
  if (!skeleton) return tl::unexpected("opening the sched BPF object failed: " + Errno(errno));

  const bool info = variant == SchedVariant::kSchedInfo;
  auto& progs = skeleton->progs;
  bpf_program__set_autoload(progs.sched_switch_info, info);
  bpf_program__set_autoload(progs.sched_wakeup_raw, !info);
  bpf_program__set_autoload(progs.sched_wakeup_new_raw, !info);
  bpf_program__set_autoload(progs.sched_switch_raw, !info);
  bpf_program__set_autoload(progs.sched_process_exit_raw, !info);
  // Task storage may not exist on the kernels the wakeup variant is for.
  bpf_map__set_autocreate(skeleton->maps.sched_task_states, info);

  // One slot per cgroup serves both probes; each probe's array holds its own max_cgroups slots
  // (a cgroup beyond them goes to that probe's overflow).
  const uint32_t runq_slots = runq.enabled ? runq.max_cgroups : 1;
  const uint32_t offcpu_slots = offcpu.enabled ? offcpu.max_cgroups : 1;
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return tl::unexpected("counting CPUs failed: " + Errno(cpus));
  auto& rodata = *skeleton->rodata;
  rodata.runq_enabled = runq.enabled;
  rodata.offcpu_enabled = offcpu.enabled;
  rodata.max_slots = std::max(runq_slots, offcpu_slots);
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

  // Maps a configuration does not use still need a size: 1 entry.
  const bool stacks = rodata.stacks_enabled;
  const std::pair<bpf_map*, uint32_t> sizes[] = {
      {skeleton->maps.cgroup_slots, rodata.max_slots},
      {skeleton->maps.slot_owners, rodata.max_slots},
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
      return tl::unexpected("sizing " + std::string(bpf_map__name(map)) + " failed: " + Errno(err));
    }
  }
  if (runq.per_cpu) {
    if (int err = bpf_map__set_type(skeleton->maps.runq_hists, BPF_MAP_TYPE_PERCPU_ARRAY);
        err != 0) {
      return tl::unexpected("making runq_hists per-CPU failed: " + Errno(err));
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
    return tl::unexpected("loading the sched BPF programs (" + std::string(ToString(variant)) +
                          ") failed: " + Errno(err));
  }
  if (int err = sched_bpf__attach(skeleton.get()); err != 0) {
    return tl::unexpected("attaching the sched BPF programs (" + std::string(ToString(variant)) +
                          ") failed: " + Errno(err));
  }
  return skeleton;
}

std::unique_ptr<SchedProbe> SchedProbe::Start(const SchedProbeOptions& options) {
  if (!options.runqueue.enabled && !options.offcpu.enabled) {
    throw std::logic_error("SchedProbe::Start with both scheduler probes disabled");
  }
  auto variant = ChooseSchedVariant(options.hook, ProbeSchedKernelFeatures());
  if (!variant) throw std::runtime_error("scheduler probes: " + variant.error());
  auto skeleton = LoadAndAttach(options, *variant);
  if (!skeleton && options.hook == SchedHook::kAuto && *variant == SchedVariant::kSchedInfo) {
    spdlog::warn("scheduler probes: {}; falling back to the wakeup hooks", skeleton.error());
    variant = SchedVariant::kWakeup;
    skeleton = LoadAndAttach(options, *variant);
  }
  if (!skeleton) throw std::runtime_error("scheduler probes: " + skeleton.error());
  spdlog::info(
      "scheduler probes ({}{}{}) attached via {}; per-CPU histograms for the first {} (run "
      "queue) and {} (off-CPU) cgroups",
      options.runqueue.enabled ? "runqueue_latency" : "",
      options.runqueue.enabled && options.offcpu.enabled ? ", " : "",
      options.offcpu.enabled ? "offcpu" : "", ToString(*variant),
      (*skeleton)->rodata->runq_hot_slots, (*skeleton)->rodata->offcpu_hot_slots);
  return std::unique_ptr<SchedProbe>(new SchedProbe(std::move(*skeleton), *variant, options));
}

SchedProbe::SchedProbe(Skeleton skeleton, SchedVariant variant, SchedProbeOptions options)
    : skeleton_(std::move(skeleton)), variant_(variant), options_(std::move(options)) {}

SchedProbe::~SchedProbe() = default;

const bpf_object* SchedProbe::object() const { return skeleton_->obj; }

tl::expected<std::vector<std::pair<uint64_t, uint32_t>>, std::string> SchedProbe::CgroupSlots()
    const {
  const bpf_map* map = skeleton_->maps.cgroup_slots;
  return ReadHashMap<uint64_t, uint32_t>(bpf_map__fd(map), "cgroup_slots",
                                         bpf_map__max_entries(map));
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
      if (slot < arrays.hot) {
        const std::byte* value = hot_values.data() + (slot * per_slot + entry) * hot_entry;
        sched_hist sum{};
        for (int cpu = 0; cpu < cpus; ++cpu) AddHist(sum, hist_at(value, cpu));
        if (HistCount(sum) != 0) add(cgroup_id, entry, kAllCpus, sum);
        continue;
      }
      const std::byte* value =
          shared_values.data() + ((slot - arrays.hot) * per_slot + entry) * shared_entry;
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

  auto slots = CgroupSlots();
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
  auto slots = CgroupSlots();
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

}  // namespace kpulse
