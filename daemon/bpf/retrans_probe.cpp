#include "bpf/retrans_probe.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>
#include <sys/mount.h>
#include <sys/stat.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "bpf/map_reader.h"
#include "bpf/bpf_skeleton.h"
#include "retrans.skel.h"

namespace kpulse {

namespace {

constexpr const char* kTracefs = "/sys/kernel/tracing";

std::string Errno(int err) { return std::strerror(err < 0 ? -err : err); }

// The classic tracepoint fallback finds event ids in tracefs, which some hosts leave unmounted.
void EnsureTracefsMounted() {
  struct stat st {};
  if (stat((std::string(kTracefs) + "/events").c_str(), &st) == 0) return;
  if (mount("nodev", kTracefs, "tracefs", 0, nullptr) == 0) {
    spdlog::info("mounted tracefs at {} for the classic tracepoint fallback", kTracefs);
  } else {
    spdlog::warn(
        "tracefs is not mounted at {} and mounting it failed ({}); classic tracepoints "
        "cannot attach",
        kTracefs, Errno(errno));
  }
}

// net.ipv4.ip_local_port_range of the daemon's network namespace (the host's, for a node agent).
std::pair<uint16_t, uint16_t> EphemeralPortRange() {
  std::ifstream file("/proc/sys/net/ipv4/ip_local_port_range");
  unsigned lo = 0, hi = 0;
  if (file >> lo >> hi && lo <= hi && hi <= 65535) {
    return {static_cast<uint16_t>(lo), static_cast<uint16_t>(hi)};
  }
  spdlog::warn("cannot read net.ipv4.ip_local_port_range; assuming 32768-60999");
  return {32768, 60999};
}

}  // namespace

std::string_view ToString(RetransVariant variant) {
  switch (variant) {
    case RetransVariant::kTpBtfWithErr:
    case RetransVariant::kTpBtf:
      return "tp_btf";
    case RetransVariant::kTracepoint:
      return "tracepoint";
  }
  return "unknown";
}

tl::expected<RetransVariant, std::string> ChooseRetransVariant(
    RetransHook hook, const RetransKernelFeatures& kernel) {
  if (hook == RetransHook::kTracepoint) return RetransVariant::kTracepoint;
  if (kernel.tp_btf) {
    return kernel.reports_errors ? RetransVariant::kTpBtfWithErr : RetransVariant::kTpBtf;
  }
  if (hook == RetransHook::kTpBtf) {
    return tl::unexpected(std::string(
        "hook tp_btf requested, but the kernel's BTF has no tcp_retransmit_skb/synack tracepoint "
        "types"));
  }
  return RetransVariant::kTracepoint;
}

template <>
void SkeletonDeleter<retrans_bpf>::operator()(retrans_bpf* skeleton) const {
  retrans_bpf__destroy(skeleton);
}

tl::expected<RetransProbe::Skeleton, BpfFailure> RetransProbe::LoadAndAttach(
    const RetransProbeOptions& config, RetransVariant variant) {
  Skeleton skeleton(retrans_bpf__open());
  if (!skeleton) return Failed("opening the retrans BPF object");

  auto& progs = skeleton->progs;
  const bool tp_btf = variant != RetransVariant::kTracepoint;
  bpf_program__set_autoload(progs.retransmit_skb_btf, variant == RetransVariant::kTpBtfWithErr);
  bpf_program__set_autoload(progs.retransmit_skb_btf_noerr, variant == RetransVariant::kTpBtf);
  bpf_program__set_autoload(progs.retransmit_synack_btf, tp_btf);
  bpf_program__set_autoload(progs.retransmit_skb_tp, !tp_btf);
  bpf_program__set_autoload(progs.retransmit_synack_tp, !tp_btf);

  auto& rodata = *skeleton->rodata;
  rodata.track_flows = config.flow_labels != FlowLabels::kNone;
  rodata.flow_remote_only = config.flow_labels == FlowLabels::kRemote;
  rodata.fold_ephemeral = config.fold_ephemeral_ports;
  std::tie(rodata.ephemeral_lo, rodata.ephemeral_hi) = EphemeralPortRange();

  // An unused flow map still needs a size; keep it minimal when flows are not tracked.
  const uint32_t flows = rodata.track_flows ? config.max_flows : 1;
  if (int err = bpf_map__set_max_entries(skeleton->maps.retrans_flows, flows); err != 0) {
    return Failed("sizing retrans_flows", err);
  }
  if (int err = bpf_map__set_max_entries(skeleton->maps.retrans_cgroups, config.max_cgroups);
      err != 0) {
    return Failed("sizing retrans_cgroups", err);
  }

  if (int err = retrans_bpf__load(skeleton.get()); err != 0) {
    return Failed("loading the retrans BPF programs (" + std::string(ToString(variant)) + ")", err);
  }
  if (!tp_btf) EnsureTracefsMounted();
  if (int err = retrans_bpf__attach(skeleton.get()); err != 0) {
    return Failed("attaching the retrans BPF programs (" + std::string(ToString(variant)) + ")", err);
  }
  return skeleton;
}

std::unique_ptr<RetransProbe> RetransProbe::Start(const RetransProbeOptions& config) {
  const RetransKernelFeatures kernel = ProbeRetransKernelFeatures();
  auto chosen = ChooseRetransVariant(config.hook, kernel);
  if (!chosen) throw ProbeError("tcp_retransmit", BpfFailure{chosen.error()});
  const bool may_fall_back =
      config.hook == RetransHook::kAuto && *chosen != RetransVariant::kTracepoint;
  auto [variant, skeleton] = LoadWithFallback<RetransVariant, retrans_bpf>(
      "tcp_retransmit", *chosen,
      may_fall_back ? std::optional(RetransVariant::kTracepoint) : std::nullopt,
      "the classic tracepoint",
      [&config](RetransVariant v) { return LoadAndAttach(config, v); });
  spdlog::info("tcp_retransmit: attached via {} (failed attempts {})", ToString(variant),
               kernel.reports_errors ? "counted apart" : "not reported by this kernel");
  return std::unique_ptr<RetransProbe>(
      new RetransProbe(std::move(skeleton), variant, kernel.reports_errors));
}

RetransProbe::RetransProbe(Skeleton skeleton, RetransVariant variant, bool reports_failures)
    : skeleton_(std::move(skeleton)), variant_(variant), reports_failures_(reports_failures) {}

RetransProbe::~RetransProbe() = default;

const bpf_object* RetransProbe::object() const { return skeleton_->obj; }

std::string_view RetransProbe::hook() const { return ToString(variant_); }

tl::expected<RetransSnapshot, std::string> RetransProbe::Snapshot() const {
  std::lock_guard lock(mu_);
  RetransSnapshot snapshot;
  const auto& maps = skeleton_->maps;

  auto totals =
      ReadPerCpuValue<retrans_totals>(bpf_map__fd(maps.retrans_totals), "retrans_totals", 0,
                                      [](retrans_totals& sum, const retrans_totals& cpu) {
                                        for (int kind = 0; kind < RETRANS_KIND_MAX; ++kind) {
                                          sum.segments[kind] += cpu.segments[kind];
                                          sum.failures[kind] += cpu.failures[kind];
                                          sum.cgroup_overflow[kind] += cpu.cgroup_overflow[kind];
                                        }
                                        sum.flows_created += cpu.flows_created;
                                        sum.flow_update_failures += cpu.flow_update_failures;
                                      });
  if (!totals) return tl::unexpected(totals.error());
  snapshot.totals = *totals;

  snapshot.cgroup_capacity = bpf_map__max_entries(maps.retrans_cgroups);
  auto cgroups = ReadHashMap<retrans_cgroup_key, retrans_cgroup_value>(
      bpf_map__fd(maps.retrans_cgroups), "retrans_cgroups", snapshot.cgroup_capacity);
  if (!cgroups) return tl::unexpected(cgroups.error());
  snapshot.cgroups = std::move(*cgroups);

  snapshot.flow_capacity = bpf_map__max_entries(maps.retrans_flows);
  auto flows = ReadHashMap<retrans_flow_key, retrans_flow_value>(
      bpf_map__fd(maps.retrans_flows), "retrans_flows", snapshot.flow_capacity);
  if (!flows) return tl::unexpected(flows.error());
  snapshot.flows = std::move(*flows);
  snapshot.retired = std::exchange(retired_, {});
  return snapshot;
}

tl::expected<uint32_t, std::string> RetransProbe::SweepCgroups(
    const std::function<bool(uint64_t)>& gone) {
  std::lock_guard lock(mu_);
  const bpf_map* map = skeleton_->maps.retrans_cgroups;
  const int fd = bpf_map__fd(map);
  auto entries = ReadHashMap<retrans_cgroup_key, retrans_cgroup_value>(fd, "retrans_cgroups",
                                                                       bpf_map__max_entries(map));
  if (!entries) return tl::unexpected(entries.error());
  uint32_t removed = 0;
  for (const auto& [key, ignored] : *entries) {
    if (!gone(key.cgroup_id)) continue;
    retrans_cgroup_value value{};
    // One step where the kernel has it (hash maps: 5.14), so no add lands between read and
    // delete; else read, then delete.
    if (bpf_map_lookup_and_delete_elem(fd, &key, &value) != 0) {
      if (errno == ENOENT) continue;
      if (bpf_map_lookup_elem(fd, &key, &value) != 0 || bpf_map_delete_elem(fd, &key) != 0) {
        if (errno == ENOENT) continue;
        return tl::unexpected("removing a retrans_cgroups entry failed: " + Errno(errno));
      }
    }
    retired_.emplace_back(key, value);
    ++removed;
  }
  // Bounded without scrapes: merge into cgroup id 0 (reported as deleted) past the map's size.
  if (retired_.size() > bpf_map__max_entries(map)) {
    std::array<uint64_t, RETRANS_KIND_MAX> by_kind{};
    for (const auto& [key, value] : retired_) {
      if (key.kind < RETRANS_KIND_MAX) by_kind[key.kind] += value.segments;
    }
    retired_.clear();
    for (uint32_t kind = 0; kind < RETRANS_KIND_MAX; ++kind) {
      retired_.push_back({retrans_cgroup_key{0, kind, 0}, retrans_cgroup_value{by_kind[kind]}});
    }
  }
  return removed;
}

}  // namespace kpulse
