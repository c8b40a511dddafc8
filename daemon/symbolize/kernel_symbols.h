#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace kpulse {

/// Kernel text symbols from /proc/kallsyms (or a file in that format, for tests), sorted by
/// address for binary search.
///
/// Lines read "<hex address> <type> <name>[\t[<module>]]". Symbols of type t/T/w/W are functions;
/// the few data symbols kallsyms lists (d/D/b/B/r/R) and the end markers `_etext`/`_einittext`
/// are kept only as boundaries, so an address past the end of the text resolves to "[unknown]"
/// rather than to the last function before it. Absolute symbols (a/A) are ignored. Among symbols
/// at one address a function wins over a boundary, a global (T) over a local (t), then the first
/// listed. kallsyms gives no sizes: an address belongs to the nearest function at or below it.
///
/// Names: core kernel symbols are returned bare ("schedule"); symbols of modules, BPF programs and
/// trampolines carry their module in brackets, as kallsyms prints it ("nft_do_chain [nf_tables]",
/// "bpf_prog_6deef7357e7b4530_handle [bpf]"), so a flame graph tells them from core code.
///
/// Addresses are looked up as given. Frames other than the innermost are return addresses; one
/// that ends a function (a call to a noreturn function) names the following function. Callers who
/// care pass address - 1 for those frames.
///
/// Immutable after Load(): Resolve may be called from any number of threads. The table holds
/// about 120k symbols on a distribution kernel (a few MB); load it once, not per request.
class KernelSymbols {
 public:
  /// Reads and indexes `path`. Returns nullptr, with a spdlog warning, when the file cannot be
  /// read, lists no function, or every address reads 0 (kptr_restrict hides them from readers
  /// without CAP_SYSLOG).
  static std::unique_ptr<KernelSymbols> Load(const std::string& path = "/proc/kallsyms");

  /// Name of the function containing `address`, or "[unknown]" when the address lies below the
  /// first symbol or in a region that ends at a boundary symbol.
  std::string Resolve(uint64_t address) const;

  /// Number of function symbols indexed (boundaries and duplicates of one address not counted).
  size_t size() const { return functions_; }

 private:
  struct Entry {
    uint64_t address;
    uint32_t name_offset;  // Into names_.
    uint32_t name_length;  // 0: a boundary, not a function.
  };

  KernelSymbols() = default;

  std::vector<Entry> entries_;  // Sorted by address, one per address.
  std::string names_;           // Every function name, "name" or "name [module]", back to back.
  size_t functions_ = 0;
};

}  // namespace kpulse
