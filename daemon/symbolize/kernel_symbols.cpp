#include "symbolize/kernel_symbols.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <limits>
#include <string_view>
#include <utility>

namespace kpulse {
namespace {

constexpr const char* kUnknown = "[unknown]";

// Order among symbols sharing one address: the smallest wins.
enum class Rank : uint8_t { kGlobalFunction = 0, kLocalFunction = 1, kBoundary = 2 };

struct Parsed {
  uint64_t address;
  Rank rank;
  uint32_t order;        // Line number: the first listed wins a tie.
  uint32_t name_offset;  // Into the scratch arena.
  uint32_t name_length;
};

// Next whitespace-separated field of `line` from `pos`; empty at the end.
std::string_view NextField(std::string_view line, size_t& pos) {
  while (pos < line.size() && (line[pos] == ' ' || line[pos] == '\t')) ++pos;
  const size_t start = pos;
  while (pos < line.size() && line[pos] != ' ' && line[pos] != '\t') ++pos;
  return line.substr(start, pos - start);
}

// Ends of text regions that carry a symbol of their own and would otherwise swallow what follows.
bool IsEndMarker(std::string_view name) { return name == "_etext" || name == "_einittext"; }

}  // namespace

std::unique_ptr<KernelSymbols> KernelSymbols::Load(const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    spdlog::warn("kernel symbols: cannot open {}: {}", path, std::strerror(errno));
    return nullptr;
  }

  std::vector<Parsed> parsed;
  parsed.reserve(1 << 17);
  std::string scratch;  // Names of every candidate; compacted after de-duplication.
  bool any_nonzero = false;
  std::string line;
  uint32_t line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    size_t pos = 0;
    const std::string_view address_field = NextField(line, pos);
    const std::string_view type = NextField(line, pos);
    const std::string_view name = NextField(line, pos);
    const std::string_view module = NextField(line, pos);
    uint64_t address = 0;
    const auto [end, ec] = std::from_chars(
        address_field.data(), address_field.data() + address_field.size(), address, 16);
    if (ec != std::errc() || end != address_field.data() + address_field.size() ||
        type.size() != 1 || name.empty()) {
      continue;  // Not a symbol line; kallsyms has none, a hand-written fixture might.
    }
    if (address != 0) any_nonzero = true;

    Rank rank;
    switch (type[0]) {
      case 'T':
      case 'W':
        rank = Rank::kGlobalFunction;
        break;
      case 't':
      case 'w':
        rank = Rank::kLocalFunction;
        break;
      case 'a':
      case 'A':
        continue;  // Absolute: a value, not a place in memory.
      default:
        rank = Rank::kBoundary;
        break;
    }
    if (rank != Rank::kBoundary && IsEndMarker(name)) rank = Rank::kBoundary;

    Parsed entry{address, rank, line_number, static_cast<uint32_t>(scratch.size()), 0};
    if (rank != Rank::kBoundary) {
      scratch.append(name);
      if (module.size() > 2 && module.front() == '[' && module.back() == ']') {
        scratch.push_back(' ');
        scratch.append(module);
      }
      entry.name_length = static_cast<uint32_t>(scratch.size() - entry.name_offset);
    }
    if (scratch.size() > std::numeric_limits<uint32_t>::max()) {
      spdlog::warn("kernel symbols: {} is implausibly large; giving up", path);
      return nullptr;
    }
    parsed.push_back(entry);
  }
  if (in.bad()) {
    spdlog::warn("kernel symbols: reading {} failed: {}", path, std::strerror(errno));
    return nullptr;
  }
  if (!parsed.empty() && !any_nonzero) {
    spdlog::warn(
        "kernel symbols: every address in {} reads 0 (kernel.kptr_restrict hides them without "
        "CAP_SYSLOG); kernel stacks stay unresolved",
        path);
    return nullptr;
  }

  std::sort(parsed.begin(), parsed.end(), [](const Parsed& a, const Parsed& b) {
    if (a.address != b.address) return a.address < b.address;
    if (a.rank != b.rank) return a.rank < b.rank;
    return a.order < b.order;
  });

  std::unique_ptr<KernelSymbols> symbols(new KernelSymbols());
  symbols->entries_.reserve(parsed.size());
  for (size_t i = 0; i < parsed.size(); ++i) {
    if (i > 0 && parsed[i].address == parsed[i - 1].address) continue;  // Lost the tie.
    Entry entry{parsed[i].address, static_cast<uint32_t>(symbols->names_.size()),
                parsed[i].name_length};
    if (entry.name_length > 0) {
      symbols->names_.append(scratch, parsed[i].name_offset, parsed[i].name_length);
      ++symbols->functions_;
    }
    symbols->entries_.push_back(entry);
  }
  if (symbols->functions_ == 0) {
    spdlog::warn("kernel symbols: {} lists no function", path);
    return nullptr;
  }
  symbols->entries_.shrink_to_fit();
  symbols->names_.shrink_to_fit();
  spdlog::debug("kernel symbols: {} functions from {}", symbols->functions_, path);
  return symbols;
}

std::string KernelSymbols::Resolve(uint64_t address) const {
  auto it =
      std::upper_bound(entries_.begin(), entries_.end(), address,
                       [](uint64_t value, const Entry& entry) { return value < entry.address; });
  if (it == entries_.begin()) return kUnknown;
  --it;
  if (it->name_length == 0) return kUnknown;
  return names_.substr(it->name_offset, it->name_length);
}

}  // namespace kpulse
