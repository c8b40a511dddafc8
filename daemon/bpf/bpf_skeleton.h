#pragma once

// The one owner of a libbpf skeleton, and the load-with-fallback step both probes share.

#include <cerrno>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <tl/expected.hpp>
#include <utility>

#include <spdlog/spdlog.h>

namespace kpulse {

/// Destroys a skeleton `Skel` (the generated `<name>_bpf__destroy`: links detach, maps and
/// programs close). Each probe's .cpp defines the specialisation next to its skeleton header,
/// which is too large to include anywhere else.
template <typename Skel>
struct SkeletonDeleter {
  void operator()(Skel* skeleton) const;
};

/// Owns an opened (and later loaded and attached) skeleton.
template <typename Skel>
using SkeletonPtr = std::unique_ptr<Skel, SkeletonDeleter<Skel>>;

/// A failed libbpf or kernel step: what was being done, and the errno it failed with (0 when
/// no errno applies, e.g. a hook the kernel lacks).
struct BpfFailure {
  std::string what;  // "loading the retrans BPF programs (tp_btf)"
  int error = 0;     // positive errno
  std::string Message() const {
    return error == 0 ? what : what + " failed: " + std::strerror(error);
  }
};

/// `what` failed with libbpf's return value `err` (negative errno) or, when it is -1 or 0, errno.
inline tl::unexpected<BpfFailure> Failed(std::string what, int err = 0) {
  const int code = err < -1 ? -err : (err > 0 ? err : errno);
  return tl::unexpected(BpfFailure{std::move(what), code});
}

/// Thrown by the probes' Start() when nothing attached: the probe name and its failure in one
/// line, with the errno kept (code().value(), 0 when none applies). The daemon catches exactly
/// this type: anything else (std::bad_alloc, a bug) is not "the probe is down".
class ProbeError : public std::runtime_error {
 public:
  ProbeError(std::string_view probe, const BpfFailure& failure)
      : std::runtime_error(std::string(probe) + ": " + failure.Message()),
        code_(failure.error, std::generic_category()) {}
  const std::error_code& code() const { return code_; }

 private:
  std::error_code code_;
};

/// Loads `preferred` with `load(variant)`; when that fails and `fallback` is set, logs why and
/// loads `*fallback` instead. Returns the variant that loaded with its skeleton, or throws
/// ProbeError naming `probe` with the last failure.
template <typename Variant, typename Skel, typename Load>
std::pair<Variant, SkeletonPtr<Skel>> LoadWithFallback(std::string_view probe, Variant preferred,
                                                       std::optional<Variant> fallback,
                                                       std::string_view fallback_name,
                                                       Load&& load) {
  tl::expected<SkeletonPtr<Skel>, BpfFailure> skeleton = load(preferred);
  Variant variant = preferred;
  if (!skeleton && fallback) {
    spdlog::warn("{}: {}; falling back to {}", probe, skeleton.error().Message(), fallback_name);
    variant = *fallback;
    skeleton = load(variant);
  }
  if (!skeleton) throw ProbeError(probe, skeleton.error());
  return {variant, std::move(*skeleton)};
}

}  // namespace kpulse
