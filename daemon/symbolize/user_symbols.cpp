#include "symbolize/user_symbols.h"

#include <cxxabi.h>
#include <fcntl.h>
#include <gelf.h>
#include <libelf.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <fstream>
#include <limits>
#include <optional>
#include <string_view>

#include "util/unique_fd.h"

namespace kpulse {
namespace {

constexpr const char* kUnknown = "[unknown]";
constexpr size_t kMaxDemangledInput = 4096;

// One executable, file-backed line of /proc/<pid>/maps.
struct Mapping {
  uint64_t start = 0;
  uint64_t end = 0;
  uint64_t pgoff = 0;
  uint64_t device = 0;  // major << 32 | minor, as maps prints them.
  uint64_t inode = 0;
  std::string path;  // As maps prints it: may end in " (deleted)", may be empty.
};

std::string_view NextField(std::string_view line, size_t& pos) {
  while (pos < line.size() && line[pos] == ' ') ++pos;
  const size_t start = pos;
  while (pos < line.size() && line[pos] != ' ') ++pos;
  return line.substr(start, pos - start);
}

bool ParseNumber(std::string_view text, int base, uint64_t& value) {
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value, base);
  return ec == std::errc() && end == text.data() + text.size() && !text.empty();
}

// "start-end perms offset major:minor inode   path"; nullopt for lines that are not executable
// file mappings (anonymous memory, heap, stack, [vdso]) or do not parse.
std::optional<Mapping> ParseMapsLine(std::string_view line) {
  size_t pos = 0;
  const std::string_view range = NextField(line, pos);
  const std::string_view perms = NextField(line, pos);
  const std::string_view offset = NextField(line, pos);
  const std::string_view device = NextField(line, pos);
  const std::string_view inode = NextField(line, pos);
  if (perms.size() < 3 || perms[2] != 'x') return std::nullopt;
  Mapping mapping;
  const size_t dash = range.find('-');
  const size_t colon = device.find(':');
  uint64_t major = 0;
  uint64_t minor = 0;
  if (dash == std::string_view::npos || colon == std::string_view::npos ||
      !ParseNumber(range.substr(0, dash), 16, mapping.start) ||
      !ParseNumber(range.substr(dash + 1), 16, mapping.end) ||
      !ParseNumber(offset, 16, mapping.pgoff) || !ParseNumber(device.substr(0, colon), 16, major) ||
      !ParseNumber(device.substr(colon + 1), 16, minor) || !ParseNumber(inode, 10, mapping.inode) ||
      mapping.inode == 0 || mapping.start >= mapping.end) {
    return std::nullopt;
  }
  mapping.device = major << 32 | minor;
  while (pos < line.size() && line[pos] == ' ') ++pos;
  mapping.path = std::string(line.substr(pos));
  return mapping;
}

// Executable file mappings of `pid`, in address order (the order maps lists them in); nullopt when
// the process is gone or its maps unreadable.
std::optional<std::vector<Mapping>> ReadMaps(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/maps");
  if (!in) return std::nullopt;
  std::vector<Mapping> mappings;
  std::string line;
  while (std::getline(in, line)) {
    if (auto mapping = ParseMapsLine(line)) mappings.push_back(std::move(*mapping));
  }
  if (in.bad()) return std::nullopt;
  std::sort(mappings.begin(), mappings.end(),
            [](const Mapping& a, const Mapping& b) { return a.start < b.start; });
  return mappings;
}

std::string Hex(uint64_t value) {
  char buffer[16];
  const auto result = std::to_chars(buffer, buffer + sizeof(buffer), value, 16);
  return std::string(buffer, result.ptr);
}

// Opens `path` read-only if it is a regular file (and, if given, has that inode), else -1. The
// stat before the open keeps us from opening devices or FIFOs a process has mapped; O_NONBLOCK
// covers a FIFO swapped in between, and the fstat checks what was opened.
int OpenRegularFile(const std::string& path, std::optional<uint64_t> expected_inode) {
  struct stat st {};
  if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return -1;
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
  if (fd < 0) return -1;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) ||
      (expected_inode && static_cast<uint64_t>(st.st_ino) != *expected_inode)) {
    close(fd);
    return -1;
  }
  return fd;
}

// The file behind `mapping`, preferring the mapping itself over its path; -1 when neither opens.
int OpenMappedFile(pid_t pid, const Mapping& mapping) {
  const std::string proc = "/proc/" + std::to_string(pid);
  const int fd = OpenRegularFile(proc + "/map_files/" + Hex(mapping.start) + "-" + Hex(mapping.end),
                                 std::nullopt);
  if (fd >= 0) return fd;
  constexpr std::string_view kDeleted = " (deleted)";
  const std::string& path = mapping.path;
  if (path.empty() || path.front() != '/' ||
      (path.size() >= kDeleted.size() &&
       path.compare(path.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0)) {
    return -1;
  }
  return OpenRegularFile(proc + "/root" + path, mapping.inode);
}

class ScopedElf {
 public:
  explicit ScopedElf(Elf* elf) : elf_(elf) {}
  ~ScopedElf() {
    if (elf_ != nullptr) elf_end(elf_);
  }
  ScopedElf(const ScopedElf&) = delete;
  ScopedElf& operator=(const ScopedElf&) = delete;
  Elf* get() const { return elf_; }

 private:
  Elf* elf_;
};

bool LibelfReady() {
  static const bool ready = elf_version(EV_CURRENT) != EV_NONE;
  return ready;
}

}  // namespace

std::string Demangle(const std::string& name) {
  if (name.size() < 3 || name.size() > kMaxDemangledInput || name.compare(0, 2, "_Z") != 0) {
    return name;
  }
  int status = 0;
  char* demangled = abi::__cxa_demangle(name.c_str(), nullptr, nullptr, &status);
  if (demangled == nullptr) return name;
  std::string result = status == 0 ? std::string(demangled) : name;
  std::free(demangled);
  return result;
}

class ElfSymbols {
 public:
  /// Reads the loadable segments and function symbols of the ELF file open on `fd`; an empty
  /// table (resolves nothing) when the file is not ELF or has no function symbols.
  static std::shared_ptr<const ElfSymbols> Read(int fd);

  /// Name (mangled) of the function at `file_offset` of the file, or empty.
  std::string_view Lookup(uint64_t file_offset) const;

 private:
  struct Segment {
    uint64_t offset;
    uint64_t vaddr;
    uint64_t size;  // p_filesz: code lives in the file-backed part.
  };
  struct Symbol {
    uint64_t start;
    uint64_t end;  // Exclusive.
    uint32_t name_offset;
    uint32_t name_length;
  };

  std::vector<Segment> segments_;
  std::vector<Symbol> symbols_;  // Sorted by start, one per start.
  std::string names_;
};

std::shared_ptr<const ElfSymbols> ElfSymbols::Read(int fd) {
  auto table = std::make_shared<ElfSymbols>();
  if (!LibelfReady()) return table;
  ScopedElf elf(elf_begin(fd, ELF_C_READ_MMAP, nullptr));
  if (elf.get() == nullptr || elf_kind(elf.get()) != ELF_K_ELF) return table;

  size_t phdr_count = 0;
  if (elf_getphdrnum(elf.get(), &phdr_count) != 0) return table;
  for (size_t i = 0; i < phdr_count; ++i) {
    GElf_Phdr phdr;
    if (gelf_getphdr(elf.get(), static_cast<int>(i), &phdr) == nullptr) continue;
    if (phdr.p_type == PT_LOAD && phdr.p_filesz > 0) {
      table->segments_.push_back({phdr.p_offset, phdr.p_vaddr, phdr.p_filesz});
    }
  }
  if (table->segments_.empty()) return table;

  // Section extents by index (bound size-0 symbols), and the symbol tables.
  std::vector<std::pair<uint64_t, uint64_t>> sections;
  Elf_Scn* symtab = nullptr;
  Elf_Scn* dynsym = nullptr;
  for (Elf_Scn* scn = elf_nextscn(elf.get(), nullptr); scn != nullptr;
       scn = elf_nextscn(elf.get(), scn)) {
    GElf_Shdr shdr;
    if (gelf_getshdr(scn, &shdr) == nullptr) continue;
    const size_t index = elf_ndxscn(scn);
    if (sections.size() <= index) sections.resize(index + 1, {0, 0});
    sections[index] = {shdr.sh_addr, shdr.sh_addr + shdr.sh_size};
    if (shdr.sh_type == SHT_SYMTAB) symtab = scn;
    if (shdr.sh_type == SHT_DYNSYM) dynsym = scn;
  }

  struct Candidate {
    Symbol symbol;
    bool sized;
    int binding_rank;  // 0 global or weak, 1 local.
    size_t underscores;
    size_t order;
  };
  std::vector<Candidate> candidates;
  std::string scratch;
  const auto read_table = [&](Elf_Scn* scn) {
    GElf_Shdr shdr;
    if (scn == nullptr || gelf_getshdr(scn, &shdr) == nullptr || shdr.sh_entsize == 0) return;
    Elf_Data* data = elf_getdata(scn, nullptr);
    if (data == nullptr) return;
    const size_t count = shdr.sh_size / shdr.sh_entsize;
    for (size_t i = 0; i < count; ++i) {
      GElf_Sym sym;
      if (gelf_getsym(data, static_cast<int>(i), &sym) == nullptr) continue;
      const int type = GELF_ST_TYPE(sym.st_info);
      if ((type != STT_FUNC && type != STT_GNU_IFUNC) || sym.st_shndx == SHN_UNDEF ||
          sym.st_value == 0) {
        continue;
      }
      const char* name = elf_strptr(elf.get(), shdr.sh_link, sym.st_name);
      if (name == nullptr || name[0] == '\0') continue;
      uint64_t end = std::numeric_limits<uint64_t>::max();
      if (sym.st_size > 0) {
        end = sym.st_value + sym.st_size;
      } else if (sym.st_shndx < SHN_LORESERVE && sym.st_shndx < sections.size()) {
        const auto [section_start, section_end] = sections[sym.st_shndx];
        if (section_start <= sym.st_value && sym.st_value < section_end) end = section_end;
      }
      const std::string_view name_view(name);
      const size_t name_offset = scratch.size();
      scratch.append(name_view);
      if (scratch.size() > std::numeric_limits<uint32_t>::max()) return;
      candidates.push_back({{sym.st_value, end, static_cast<uint32_t>(name_offset),
                             static_cast<uint32_t>(name_view.size())},
                            sym.st_size > 0,
                            GELF_ST_BIND(sym.st_info) == STB_LOCAL ? 1 : 0,
                            std::min(name_view.find_first_not_of('_'), name_view.size()),
                            candidates.size()});
    }
  };
  read_table(symtab);
  if (candidates.empty()) read_table(dynsym);

  std::sort(candidates.begin(), candidates.end(), [](const Candidate& a, const Candidate& b) {
    if (a.symbol.start != b.symbol.start) return a.symbol.start < b.symbol.start;
    if (a.sized != b.sized) return a.sized;
    if (a.binding_rank != b.binding_rank) return a.binding_rank < b.binding_rank;
    if (a.underscores != b.underscores) return a.underscores < b.underscores;
    return a.order < b.order;
  });
  for (size_t i = 0; i < candidates.size(); ++i) {
    if (i > 0 && candidates[i].symbol.start == candidates[i - 1].symbol.start) continue;
    Symbol symbol = candidates[i].symbol;
    symbol.name_offset = static_cast<uint32_t>(table->names_.size());
    table->names_.append(scratch, candidates[i].symbol.name_offset, symbol.name_length);
    table->symbols_.push_back(symbol);
  }
  return table;
}

std::string_view ElfSymbols::Lookup(uint64_t file_offset) const {
  const auto segment =
      std::find_if(segments_.begin(), segments_.end(), [file_offset](const Segment& s) {
        return s.offset <= file_offset && file_offset - s.offset < s.size;
      });
  if (segment == segments_.end()) return {};
  const uint64_t vaddr = file_offset - segment->offset + segment->vaddr;
  auto it = std::upper_bound(symbols_.begin(), symbols_.end(), vaddr,
                             [](uint64_t value, const Symbol& s) { return value < s.start; });
  if (it == symbols_.begin()) return {};
  --it;
  if (vaddr >= it->end) return {};
  return std::string_view(names_).substr(it->name_offset, it->name_length);
}

UserSymbolizer::UserSymbolizer(size_t max_cached_files)
    : max_cached_files_(std::max<size_t>(max_cached_files, 1)) {}

UserSymbolizer::~UserSymbolizer() = default;

std::vector<std::string> UserSymbolizer::Resolve(pid_t pid,
                                                 const std::vector<uint64_t>& addresses) {
  std::vector<std::string> names(addresses.size(), kUnknown);
  if (addresses.empty() || pid <= 0) return names;
  const std::optional<std::vector<Mapping>> mappings = ReadMaps(pid);
  if (!mappings) return names;

  // Per mapping, looked up on first use within this call: the file's table, or null.
  std::vector<std::shared_ptr<const ElfSymbols>> tables(mappings->size());
  std::vector<bool> looked_up(mappings->size(), false);
  for (size_t i = 0; i < addresses.size(); ++i) {
    const uint64_t address = addresses[i];
    auto it = std::upper_bound(mappings->begin(), mappings->end(), address,
                               [](uint64_t value, const Mapping& m) { return value < m.start; });
    if (it == mappings->begin()) continue;
    --it;
    if (address >= it->end) continue;
    const auto index = static_cast<size_t>(it - mappings->begin());
    if (!looked_up[index]) {
      looked_up[index] = true;
      const FileId id{it->device, it->inode};
      tables[index] = Cached(id);
      if (tables[index] == nullptr) {
        const UniqueFd fd(OpenMappedFile(pid, *it));
        if (fd.get() >= 0) {
          tables[index] = Remember(id, ElfSymbols::Read(fd.get()));
        } else {
          spdlog::debug("user symbols: cannot open {} of pid {}", it->path, pid);
        }
      }
    }
    if (tables[index] == nullptr) continue;
    const std::string_view name = tables[index]->Lookup(address - it->start + it->pgoff);
    if (!name.empty()) names[i] = Demangle(std::string(name));
  }
  return names;
}

std::shared_ptr<const ElfSymbols> UserSymbolizer::Cached(const FileId& id) {
  const std::lock_guard<std::mutex> lock(mu_);
  const auto it = cache_.find(id);
  if (it == cache_.end()) return nullptr;
  lru_.splice(lru_.begin(), lru_, it->second.lru_position);
  return it->second.symbols;
}

std::shared_ptr<const ElfSymbols> UserSymbolizer::Remember(
    const FileId& id, std::shared_ptr<const ElfSymbols> symbols) {
  const std::lock_guard<std::mutex> lock(mu_);
  ++elf_loads_;
  const auto existing = cache_.find(id);
  if (existing != cache_.end()) {  // Another thread read the same file meanwhile.
    lru_.splice(lru_.begin(), lru_, existing->second.lru_position);
    return existing->second.symbols;
  }
  lru_.push_front(id);
  cache_.emplace(id, CacheEntry{symbols, lru_.begin()});
  while (cache_.size() > max_cached_files_) {
    cache_.erase(lru_.back());
    lru_.pop_back();
  }
  return symbols;
}

size_t UserSymbolizer::elf_loads() const {
  const std::lock_guard<std::mutex> lock(mu_);
  return elf_loads_;
}

size_t UserSymbolizer::cached_files() const {
  const std::lock_guard<std::mutex> lock(mu_);
  return cache_.size();
}

}  // namespace kpulse
