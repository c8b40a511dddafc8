#include "bpf/sched_probe.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

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

void AddHist(sched_hist& sum, const sched_hist& one) {
  for (int slot = 0; slot < SCHED_HIST_SLOTS; ++slot) sum.slots[slot] += one.slots[slot];
  sum.sum_ns += one.sum_ns;
  sum.count += one.count;
}

}  // namespace

std::string_view ToString(SchedVariant variant) {
  return variant == SchedVariant::kSchedInfo ? "sched_info" : "wakeup";
}

SchedKernelFeatures ProbeSchedKernelFeatures() {
  SchedKernelFeatures features;
  if (btf* vmlinux = btf__load_vmlinux_btf()) {
    features.sched_info = StructHasMember(vmlinux, "task_struct", "sched_info") &&
                          SchedInfoCounting();
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
    const RunqueueConfig& config, SchedVariant variant) {
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

  skeleton->rodata->per_cpu = config.per_cpu;
  if (int err = bpf_map__set_max_entries(skeleton->maps.runq_hists, config.max_cgroups);
      err != 0) {
    return tl::unexpected("sizing runq_hists failed: " + Errno(err));
  }
  if (int err = bpf_map__set_max_entries(skeleton->maps.runq_start, info ? 1 : config.max_tasks);
      err != 0) {
    return tl::unexpected("sizing runq_start failed: " + Errno(err));
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

std::unique_ptr<SchedProbe> SchedProbe::Start(const RunqueueConfig& config) {
  auto variant = ChooseSchedVariant(config.hook, ProbeSchedKernelFeatures());
  if (!variant) throw std::runtime_error("runqueue_latency: " + variant.error());
  auto skeleton = LoadAndAttach(config, *variant);
  if (!skeleton && config.hook == SchedHook::kAuto && *variant == SchedVariant::kSchedInfo) {
    spdlog::warn("runqueue_latency: {}; falling back to the wakeup hooks", skeleton.error());
    variant = SchedVariant::kWakeup;
    skeleton = LoadAndAttach(config, *variant);
  }
  if (!skeleton) throw std::runtime_error("runqueue_latency: " + skeleton.error());
  spdlog::info("runqueue_latency: attached via {}", ToString(*variant));
  return std::unique_ptr<SchedProbe>(new SchedProbe(std::move(*skeleton), *variant));
}

SchedProbe::SchedProbe(Skeleton skeleton, SchedVariant variant)
    : skeleton_(std::move(skeleton)), variant_(variant) {}

SchedProbe::~SchedProbe() = default;

const bpf_object* SchedProbe::object() const { return skeleton_->obj; }

tl::expected<RunqueueSnapshot, std::string> SchedProbe::RunqueueSnapshotNow() const {
  RunqueueSnapshot snapshot;
  const auto& maps = skeleton_->maps;
  auto totals = ReadPerCpuValue<sched_totals>(
      bpf_map__fd(maps.sched_totals), "sched_totals", 0,
      [](sched_totals& sum, const sched_totals& cpu) {
        AddHist(sum.runq_overflow, cpu.runq_overflow);
        sum.runq_start_drops += cpu.runq_start_drops;
      });
  if (!totals) return tl::unexpected(totals.error());
  snapshot.overflow = totals->runq_overflow;
  snapshot.start_drops = totals->runq_start_drops;

  snapshot.capacity = bpf_map__max_entries(maps.runq_hists);
  auto hists = ReadHashMap<runq_key, sched_hist>(bpf_map__fd(maps.runq_hists), "runq_hists",
                                                 snapshot.capacity);
  if (!hists) return tl::unexpected(hists.error());
  snapshot.hists = std::move(*hists);
  return snapshot;
}

tl::expected<std::vector<uint32_t>, std::string> SchedProbe::StartMapTids() const {
  std::vector<uint32_t> tids;
  if (variant_ != SchedVariant::kWakeup) return tids;
  auto entries = ReadHashMap<__u32, __u64>(bpf_map__fd(skeleton_->maps.runq_start), "runq_start",
                                           bpf_map__max_entries(skeleton_->maps.runq_start));
  if (!entries) return tl::unexpected(entries.error());
  for (const auto& [tid, since] : *entries) tids.push_back(tid);
  return tids;
}

}  // namespace kpulse
