#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

namespace kpulse {

/// Demangles an Itanium C++ ABI name ("_ZN6kpulse4TestEv" -> "kpulse::Test()"); returns the input
/// unchanged when it is not a mangled name, does not demangle, or is longer than 4096 bytes (names
/// come from binaries of arbitrary processes; the cap bounds the demangler's work). Thread-safe.
std::string Demangle(const std::string& name);

/// The functions of one ELF file, as read from its symbol table. Defined in user_symbols.cpp.
class ElfSymbols;

/// Resolves user-space instruction pointers of a process to function names.
///
/// Per call: reads /proc/<pid>/maps once; an address counts only inside an executable, file-backed
/// mapping [start, end) with file offset `pgoff`. Its file offset A - start + pgoff becomes an ELF
/// virtual address through the PT_LOAD program header holding that offset (vaddr = off - p_offset +
/// p_vaddr), which covers PIE executables, shared libraries and fixed-address executables alike.
/// The name is that of the function symbol (STT_FUNC or STT_GNU_IFUNC, from .symtab when the file
/// has one, else .dynsym) with st_value <= vaddr < st_value + st_size; a symbol with st_size 0
/// reaches to the next symbol or the end of its section. Among aliases at one address the name
/// kept is a sized one, then global/weak over local, then the one with fewer leading underscores
/// ("nanosleep" over "__nanosleep"), then the first in the table. C++ names are demangled.
///
/// Files are opened through /proc/<pid>/map_files/<start>-<end> (exactly the mapped file, even if
/// deleted or replaced since; needs CAP_SYS_ADMIN), else through /proc/<pid>/root/<path> (the
/// process's own mount namespace, so container binaries resolve; the inode must match the one in
/// maps). Only regular files are opened.
///
/// Parsed symbol tables are cached per file identity (device, inode from maps), least recently
/// used evicted beyond `max_cached_files`. Files that are not ELF or have no function symbols are
/// cached too (as empty), so they are not re-read per request. A file whose inode number is
/// reused by a new file after deletion keeps the old table until evicted.
///
/// Addresses are looked up as given. Frames other than the innermost are return addresses; one
/// that ends a function (a call to a noreturn function) names the following function. Callers who
/// care pass address - 1 for those frames.
///
/// Not covered: inlined frames and source lines (no DWARF), separate debuginfo files
/// (.gnu_debuglink, build-id), MiniDebugInfo (.gnu_debugdata), the vDSO, and JIT code in
/// anonymous memory (perf-<pid>.map is not read): all of these come back "[unknown]" or as the
/// enclosing exported function.
///
/// Thread-safe: one mutex guards the cache; files are read outside it, so concurrent requests for
/// different processes do not wait on each other's parsing.
class UserSymbolizer {
 public:
  explicit UserSymbolizer(size_t max_cached_files = 64);
  ~UserSymbolizer();
  UserSymbolizer(const UserSymbolizer&) = delete;
  UserSymbolizer& operator=(const UserSymbolizer&) = delete;

  /// One name per address, in order. "[unknown]" when the process is gone or unreadable, the
  /// address is not in an executable file mapping, the file cannot be opened, or no symbol covers
  /// the address. Never throws short of allocation failure.
  std::vector<std::string> Resolve(pid_t pid, const std::vector<uint64_t>& addresses);

  /// Files parsed so far (cache misses that opened a file), for tests and self-metrics.
  size_t elf_loads() const;
  /// Files whose symbol tables are cached now.
  size_t cached_files() const;

 private:
  using FileId = std::pair<uint64_t, uint64_t>;  // (device, inode) as /proc/<pid>/maps shows them.
  struct CacheEntry {
    std::shared_ptr<const ElfSymbols> symbols;
    std::list<FileId>::iterator lru_position;
  };

  std::shared_ptr<const ElfSymbols> Cached(const FileId& id);
  std::shared_ptr<const ElfSymbols> Remember(const FileId& id,
                                             std::shared_ptr<const ElfSymbols> symbols);

  const size_t max_cached_files_;
  mutable std::mutex mu_;
  std::map<FileId, CacheEntry> cache_;  // Guarded by mu_.
  std::list<FileId> lru_;               // Guarded by mu_; most recently used first.
  size_t elf_loads_ = 0;                // Guarded by mu_.
};

}  // namespace kpulse
