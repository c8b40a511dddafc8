#pragma once

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
#include "retrans/retrans.h"

struct bpf_object;
struct retrans_bpf;

namespace kpulse {

// The C++ side never re-declares the BPF structs; it checks that the compiler lays them out the
// way the BPF target does (clang -target bpf: natural alignment, no hidden padding).
static_assert(sizeof(retrans_flow_key) == 48);
static_assert(offsetof(retrans_flow_key, netns_ino) == 32);
static_assert(offsetof(retrans_flow_key, lport) == 36);
static_assert(offsetof(retrans_flow_key, family) == 40);
static_assert(offsetof(retrans_flow_key, kind) == 41);
static_assert(sizeof(retrans_flow_value) == 8);
static_assert(sizeof(retrans_cgroup_key) == 16);
static_assert(sizeof(retrans_cgroup_value) == 8);
static_assert(sizeof(retrans_totals) == 8 * (3 * RETRANS_KIND_MAX + 2));

/// Everything the retransmit maps hold at one instant, CPUs already summed.
struct RetransSnapshot {
  retrans_totals totals{};
  std::vector<std::pair<retrans_flow_key, retrans_flow_value>> flows;
  std::vector<std::pair<retrans_cgroup_key, retrans_cgroup_value>> cgroups;
  // Entries of removed cgroups taken out of the cgroup map since the previous snapshot: each is
  // reported once, here, and no longer in `cgroups`.
  std::vector<std::pair<retrans_cgroup_key, retrans_cgroup_value>> retired;
  uint32_t flow_capacity = 0;
  uint32_t cgroup_capacity = 0;
};

/// Where a collector gets retransmit data from: the real probe, or a fake in unit tests.
class RetransSource {
 public:
  virtual ~RetransSource() = default;
  /// Reads the kernel maps. Thread-safe. Never resets anything.
  virtual tl::expected<RetransSnapshot, std::string> Snapshot() const = 0;
  /// Hook variant in use: "tp_btf" or "tracepoint".
  virtual std::string_view hook() const = 0;
  /// True when the attached hook sees failed attempts (the 6.17+ tcp_retransmit_skb `err`).
  virtual bool reports_failures() const = 0;
};

/// Which tcp_retransmit_skb program the kernel can run.
enum class RetransVariant {
  kTpBtfWithErr,  // tp_btf, 3 arguments (6.17+)
  kTpBtf,         // tp_btf, 2 arguments
  kTracepoint,    // classic tracepoint (needs tracefs)
};
std::string_view ToString(RetransVariant variant);

/// Picks the variant for `hook`. Returns an error when `hook` forces tp_btf and the kernel has
/// no BTF-typed tracepoint for it.
tl::expected<RetransVariant, std::string> ChooseRetransVariant(RetransHook hook,
                                                               const RetransKernelFeatures& kernel);

/// Owns the loaded and attached retransmit BPF object (skeleton, maps, links). Destroying it
/// detaches every program and frees the maps; nothing is pinned. Not copyable or movable.
/// Snapshot() is safe to call from several threads at once.
class RetransProbe final : public RetransSource {
 public:
  /// Opens, configures, loads and attaches. With hook auto, a tp_btf failure falls back to the
  /// classic tracepoint. Throws ProbeError (one line, errno kept) when nothing attaches.
  static std::unique_ptr<RetransProbe> Start(const RetransProbeOptions& options);
  ~RetransProbe() override;
  RetransProbe(const RetransProbe&) = delete;
  RetransProbe& operator=(const RetransProbe&) = delete;

  tl::expected<RetransSnapshot, std::string> Snapshot() const override;
  std::string_view hook() const override;
  bool reports_failures() const override { return reports_failures_; }
  RetransVariant variant() const { return variant_; }
  const bpf_object* object() const;
  /// Removes the cgroup map's entries of cgroups for which `gone(cgroup_id)` is true; their
  /// counts go to the next snapshot's `retired`. A retransmit racing with the removal (on a socket
  /// of the removed cgroup) may miss the entry; it is still in the node totals. Returns the number
  /// of entries removed. Thread-safe; serialised with Snapshot().
  tl::expected<uint32_t, std::string> SweepCgroups(const std::function<bool(uint64_t)>& gone);

 private:
  using Skeleton = SkeletonPtr<retrans_bpf>;

  RetransProbe(Skeleton skeleton, RetransVariant variant, bool reports_failures);
  static tl::expected<Skeleton, BpfFailure> LoadAndAttach(const RetransProbeOptions& config,
                                                           RetransVariant variant);

  Skeleton skeleton_;
  RetransVariant variant_;
  bool reports_failures_;
  mutable std::mutex mu_;  // serialises sweeps with snapshots (which take the retired entries)
  mutable std::vector<std::pair<retrans_cgroup_key, retrans_cgroup_value>> retired_;  // mu_
};

}  // namespace kpulse
