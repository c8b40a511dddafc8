#include "bpf/map_reader.h"

#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include <cerrno>

namespace kpulse {

namespace {

std::string MapError(const char* what, const char* map_name, int err) {
  return std::string(what) + " of BPF map '" + map_name + "' failed: " + std::strerror(err);
}

// Pre-5.6 kernels have no batch operations: walk the keys one by one.
MapReadResult ReadByIteration(int map_fd, const char* map_name, size_t key_size, size_t value_size,
                              uint32_t max_entries, std::vector<std::byte>& keys,
                              std::vector<std::byte>& values) {
  size_t count = 0;
  const void* previous = nullptr;
  while (count < max_entries) {
    std::byte* key = keys.data() + count * key_size;
    if (bpf_map_get_next_key(map_fd, previous, key) != 0) {
      if (errno == ENOENT) break;
      return tl::unexpected(MapError("key iteration", map_name, errno));
    }
    // An entry deleted (or LRU-evicted) between the two calls is skipped, not an error.
    if (bpf_map_lookup_elem(map_fd, key, values.data() + count * value_size) == 0) {
      previous = key;
      ++count;
    } else if (errno != ENOENT) {
      return tl::unexpected(MapError("lookup", map_name, errno));
    }
  }
  return count;
}

}  // namespace

MapReadResult ReadHashMapBytes(int map_fd, const char* map_name, size_t key_size, size_t value_size,
                               uint32_t max_entries, std::vector<std::byte>& keys,
                               std::vector<std::byte>& values) {
  keys.resize(static_cast<size_t>(max_entries) * key_size);
  values.resize(static_cast<size_t>(max_entries) * value_size);

  // A batch must be at least one hash bucket long (else ENOSPC), so ask for the whole map.
  size_t total = 0;
  uint64_t cursor = 0;  // opaque batch position; large enough for every hash map type
  bool first = true;
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  while (total < max_entries) {
    auto count = static_cast<__u32>(max_entries - total);
    int err = bpf_map_lookup_batch(map_fd, first ? nullptr : &cursor, &cursor,
                                   keys.data() + total * key_size,
                                   values.data() + total * value_size, &count, &opts);
    first = false;
    if (err != 0 && errno != ENOENT) {
      if ((errno == EINVAL || errno == ENOTSUP || errno == EOPNOTSUPP) && total == 0) {
        return ReadByIteration(map_fd, map_name, key_size, value_size, max_entries, keys, values);
      }
      return tl::unexpected(MapError("batch lookup", map_name, errno));
    }
    total += count;  // valid on ENOENT too: the last chunk
    if (err != 0) break;
  }
  return total;
}

MapReadResult ReadArrayPrefixBytes(int map_fd, const char* map_name, uint32_t count,
                                   size_t entry_size, std::vector<std::byte>& values) {
  values.resize(static_cast<size_t>(count) * entry_size);
  std::vector<uint32_t> keys(count);
  uint32_t total = 0;
  uint32_t cursor = 0;  // opaque to us: the kernel's position (for arrays, the last key copied)
  LIBBPF_OPTS(bpf_map_batch_opts, opts);
  while (total < count) {
    __u32 chunk = count - total;
    int err =
        bpf_map_lookup_batch(map_fd, total == 0 ? nullptr : &cursor, &cursor, keys.data() + total,
                             values.data() + total * entry_size, &chunk, &opts);
    if (err != 0 && errno != ENOENT) {
      if ((errno == EINVAL || errno == ENOTSUP || errno == EOPNOTSUPP) && total == 0) break;
      return tl::unexpected(MapError("batch lookup", map_name, errno));
    }
    total += chunk;
    if (err != 0 || chunk == 0) break;
  }
  // Pre-5.6 kernels: one lookup per index.
  for (; total < count; ++total) {
    if (bpf_map_lookup_elem(map_fd, &total, values.data() + total * entry_size) != 0) {
      return tl::unexpected(MapError("lookup", map_name, errno));
    }
  }
  return static_cast<size_t>(count);
}

MapReadResult ReadPerCpuArrayBytes(int map_fd, const char* map_name, uint32_t index,
                                   size_t value_size, std::vector<std::byte>& per_cpu) {
  const int cpus = libbpf_num_possible_cpus();
  if (cpus <= 0) return tl::unexpected(MapError("counting CPUs for", map_name, -cpus));
  const size_t stride = (value_size + 7) / 8 * 8;
  per_cpu.assign(stride * static_cast<size_t>(cpus), std::byte{0});
  if (bpf_map_lookup_elem(map_fd, &index, per_cpu.data()) != 0) {
    return tl::unexpected(MapError("lookup", map_name, errno));
  }
  return static_cast<size_t>(cpus);
}

}  // namespace kpulse
