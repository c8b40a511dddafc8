#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tl/expected.hpp>
#include <type_traits>
#include <utility>
#include <vector>

namespace kpulse {

/// Error policy (see docs/design.md): code that talks to the kernel at run time returns
/// tl::expected with a one-line message carrying the errno text and the object involved;
/// exceptions are for start-up and configuration only.
using MapReadResult = tl::expected<size_t, std::string>;

/// Copies every entry of a BPF hash map (HASH, LRU_HASH) into `keys` / `values` (resized to hold
/// `max_entries`). Uses BPF_MAP_LOOKUP_BATCH (one syscall for the whole map when it fits), and
/// falls back to get_next_key + lookup on kernels without batch support. Returns the entry count.
/// Entries may change while being read; each entry is read atomically enough for counters.
MapReadResult ReadHashMapBytes(int map_fd, const char* map_name, size_t key_size, size_t value_size,
                               uint32_t max_entries, std::vector<std::byte>& keys,
                               std::vector<std::byte>& values);

/// Copies entries [0, count) of an ARRAY or PERCPU_ARRAY into `values`, `entry_size` bytes each
/// (for a per-CPU array: possible CPUs x the value size padded to 8). BPF_MAP_LOOKUP_BATCH where
/// the kernel has it, else one lookup per entry.
MapReadResult ReadArrayPrefixBytes(int map_fd, const char* map_name, uint32_t count,
                                   size_t entry_size, std::vector<std::byte>& values);

/// Reads entry `index` of a PERCPU_ARRAY into `per_cpu` (one value per possible CPU, each
/// padded to 8 bytes as the kernel lays them out). Returns the number of CPUs.
MapReadResult ReadPerCpuArrayBytes(int map_fd, const char* map_name, uint32_t index,
                                   size_t value_size, std::vector<std::byte>& per_cpu);

/// Typed wrapper over ReadHashMapBytes for the structs shared with BPF programs.
template <typename Key, typename Value>
tl::expected<std::vector<std::pair<Key, Value>>, std::string> ReadHashMap(int map_fd,
                                                                          const char* map_name,
                                                                          uint32_t max_entries) {
  static_assert(std::is_trivially_copyable_v<Key> && std::is_trivially_copyable_v<Value>);
  std::vector<std::byte> keys, values;
  auto count =
      ReadHashMapBytes(map_fd, map_name, sizeof(Key), sizeof(Value), max_entries, keys, values);
  if (!count) return tl::unexpected(count.error());
  std::vector<std::pair<Key, Value>> entries(*count);
  for (size_t i = 0; i < *count; ++i) {
    std::memcpy(&entries[i].first, keys.data() + i * sizeof(Key), sizeof(Key));
    std::memcpy(&entries[i].second, values.data() + i * sizeof(Value), sizeof(Value));
  }
  return entries;
}

/// Reads a per-CPU value and folds the CPUs' copies with `fold(accumulator, one_cpu_value)`.
template <typename Value, typename Fold>
tl::expected<Value, std::string> ReadPerCpuValue(int map_fd, const char* map_name, uint32_t index,
                                                 Fold fold) {
  static_assert(std::is_trivially_copyable_v<Value>);
  std::vector<std::byte> per_cpu;
  auto cpus = ReadPerCpuArrayBytes(map_fd, map_name, index, sizeof(Value), per_cpu);
  if (!cpus) return tl::unexpected(cpus.error());
  const size_t stride = (sizeof(Value) + 7) / 8 * 8;
  Value sum{};
  for (size_t cpu = 0; cpu < *cpus; ++cpu) {
    Value one;
    std::memcpy(&one, per_cpu.data() + cpu * stride, sizeof(Value));
    fold(sum, one);
  }
  return sum;
}

}  // namespace kpulse
