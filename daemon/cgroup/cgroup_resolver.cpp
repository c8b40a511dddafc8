#include "cgroup/cgroup_resolver.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <new>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "util/unique_fd.h"

namespace kpulse {
namespace {

// kernfs (cgroupfs, sysfs) encodes a node as an 8-byte handle holding the 64-bit node id, which is
// also the inode number and the cgroup id. include/linux/exportfs.h: FILEID_KERNFS = 0xfe.
constexpr int kFileIdKernfs = 0xfe;
constexpr unsigned kKernfsHandleBytes = sizeof(uint64_t);

// Upper bound on directories indexed by one walk: keeps a hostile or runaway tree from eating
// memory. Real hosts have thousands of cgroups.
constexpr size_t kMaxWalkEntries = size_t{1} << 20;

// Undoes the octal escapes the kernel writes into mountinfo fields (show_mountinfo() ->
// seq_escape: space, tab, newline, backslash and '#' as \ooo).
std::string UnescapeMountinfo(std::string_view field) {
  std::string out;
  out.reserve(field.size());
  for (size_t i = 0; i < field.size(); ++i) {
    const auto is_octal = [&](size_t k) {
      return k < field.size() && field[k] >= '0' && field[k] <= '7';
    };
    if (field[i] == '\\' && is_octal(i + 1) && is_octal(i + 2) && is_octal(i + 3) &&
        field[i + 1] <= '3') {
      out.push_back(static_cast<char>((field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 +
                                      (field[i + 3] - '0')));
      i += 3;
    } else {
      out.push_back(field[i]);
    }
  }
  return out;
}

std::vector<std::string_view> SplitSpaces(std::string_view line) {
  std::vector<std::string_view> fields;
  size_t pos = 0;
  while (pos < line.size()) {
    const size_t end = std::min(line.find(' ', pos), line.size());
    if (end > pos) fields.push_back(line.substr(pos, end - pos));
    pos = end + 1;
  }
  return fields;
}

// Relative form of a resolver path for *at() calls on the root fd: "/" -> ".", "/a/b" -> "a/b".
const char* RelativeTo(const std::string& path) { return path == "/" ? "." : path.c_str() + 1; }

std::optional<std::string> ReadFdLink(int fd) {
  const std::string proc = "/proc/self/fd/" + std::to_string(fd);
  std::string target(PATH_MAX, '\0');
  const ssize_t n = readlink(proc.c_str(), target.data(), target.size());
  if (n < 0) return std::nullopt;
  if (static_cast<size_t>(n) >= target.size()) {
    errno = ENAMETOOLONG;
    return std::nullopt;
  }
  target.resize(static_cast<size_t>(n));
  return target;
}

}  // namespace

std::optional<std::string> FindCgroup2Mount(const std::string& mountinfo_path) {
  std::ifstream in(mountinfo_path);
  if (!in) return std::nullopt;
  std::optional<std::string> subtree_mount;  // A bind mount of part of the hierarchy.
  std::string line;
  while (std::getline(in, line)) {
    // "36 35 98:0 /root /mnt/point rw,noatime master:1 - cgroup2 cgroup2 rw": six fixed fields,
    // zero or more optional fields, "-", then fstype, source, super options.
    const std::vector<std::string_view> fields = SplitSpaces(line);
    size_t separator = 6;
    while (separator < fields.size() && fields[separator] != "-") ++separator;
    if (separator + 1 >= fields.size() || fields[separator + 1] != "cgroup2") continue;
    std::string mount_point = UnescapeMountinfo(fields[4]);
    if (UnescapeMountinfo(fields[3]) == "/") return mount_point;
    if (!subtree_mount) subtree_mount = std::move(mount_point);
  }
  return subtree_mount;
}

CgroupResolver::CgroupResolver(std::string cgroup2_root, CgroupResolverOptions options)
    : root_(std::move(cgroup2_root)), options_(options) {
  // A plain (not O_PATH) fd: open_by_handle_at() rejects O_PATH mount fds with EBADF.
  root_fd_ = open(root_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (root_fd_ < 0) {
    throw std::system_error(errno, std::generic_category(), "cannot open cgroup2 root " + root_);
  }
  struct stat st {};
  if (fstat(root_fd_, &st) != 0) {
    const int err = errno;
    close(root_fd_);
    throw std::system_error(err, std::generic_category(), "cannot stat cgroup2 root " + root_);
  }
  root_dev_ = st.st_dev;

  if (!options_.use_file_handles) return;
  // Handles are only worth trying on kernfs: elsewhere a kernfs-typed handle fails with ESTALE,
  // which would be indistinguishable from "deleted". Ask the kernel how it encodes the root.
  alignas(file_handle) unsigned char storage[sizeof(file_handle) + MAX_HANDLE_SZ]{};
  auto* handle = new (storage) file_handle{};
  handle->handle_bytes = MAX_HANDLE_SZ;
  int mount_id = 0;
  if (name_to_handle_at(root_fd_, "", handle, &mount_id, AT_EMPTY_PATH) != 0 ||
      handle->handle_type != kFileIdKernfs || handle->handle_bytes != kKernfsHandleBytes) {
    return;
  }
  // readlink("/proc/self/fd/N") spells paths from the process's root; learn how it spells ours.
  const std::optional<std::string> link = ReadFdLink(root_fd_);
  if (!link) return;
  link_prefix_ = *link == "/" ? "" : *link;
  use_handles_.store(true, std::memory_order_relaxed);
}

CgroupResolver::~CgroupResolver() { close(root_fd_); }

std::optional<std::string> CgroupResolver::PathOf(uint64_t cgroup_id) {
  std::optional<std::string> cached;
  {
    std::lock_guard lock(mu_);
    if (auto it = cache_.find(cgroup_id); it != cache_.end()) cached = it->second;
  }
  if (cached) {
    if (StillValid(cgroup_id, *cached)) return cached;
    std::lock_guard lock(mu_);
    if (auto it = cache_.find(cgroup_id); it != cache_.end() && it->second == *cached) {
      cache_.erase(it);  // Deleted or renamed; resolve afresh below.
    }
  }

  if (use_handles_.load(std::memory_order_relaxed)) {
    std::string path;
    int error = 0;
    switch (ResolveByHandle(cgroup_id, path, error)) {
      case HandleResult::kFound: {
        std::lock_guard lock(mu_);
        Remember(cgroup_id, path);
        return path;
      }
      case HandleResult::kGone:
      case HandleResult::kOutside:
        return std::nullopt;
      case HandleResult::kUnsupported:
        if (use_handles_.exchange(false)) {
          spdlog::info(
              "cgroup ids under {}: open_by_handle_at unavailable ({}); "
              "resolving by directory walk from now on",
              root_, std::strerror(error));
        }
        break;
      case HandleResult::kFailed:
        break;
    }
  }

  std::lock_guard lock(mu_);
  return ResolveByWalk(cgroup_id);
}

// What open_by_handle_at does on kernfs (verified on 6.18, cgroup2 and the v1 name=systemd tree):
//   live id              -> an fd; /proc/self/fd/N reads as the cgroup directory's path;
//   root id (1)          -> the mount root itself;
//   deleted id           -> ESTALE (kernfs_fh_to_dentry finds no active node with that id);
//   never-allocated id   -> ESTALE as well;
//   no CAP_DAC_READ_SEARCH -> EPERM for every id, live or not (checked before decoding).
// On a non-kernfs tree (ext4, tmpfs) a FILEID_KERNFS handle also gives ESTALE, which is why the
// constructor enables handles only when the root itself encodes as a kernfs handle.
// On kUnsupported, `error` is the errno that showed it.
CgroupResolver::HandleResult CgroupResolver::ResolveByHandle(uint64_t cgroup_id, std::string& path,
                                                             int& error) const {
  alignas(file_handle) unsigned char storage[sizeof(file_handle) + kKernfsHandleBytes]{};
  auto* handle = new (storage) file_handle{};
  handle->handle_bytes = kKernfsHandleBytes;
  handle->handle_type = kFileIdKernfs;
  std::memcpy(handle->f_handle, &cgroup_id, sizeof(cgroup_id));

  const UniqueFd fd(open_by_handle_at(root_fd_, handle, O_PATH | O_CLOEXEC));
  if (fd.get() < 0) {
    error = errno;
    switch (error) {
      case ESTALE:
        return HandleResult::kGone;
      case EPERM:       // Capability dropped (or never held).
      case EACCES:      // LSM said no.
      case EOPNOTSUPP:  // Filesystem cannot decode handles.
      case EINVAL:      // Handle type rejected.
      case ENOSYS:      // Syscall filtered (seccomp) or not built in.
      case EBADF:
        return HandleResult::kUnsupported;
      default:  // EMFILE, ENOMEM, ...: transient; walk this time, try handles again next time.
        return HandleResult::kFailed;
    }
  }

  struct stat st {};
  if (fstat(fd.get(), &st) != 0) return HandleResult::kFailed;
  if (!S_ISDIR(st.st_mode)) return HandleResult::kGone;  // A file (cgroup.procs...), not a cgroup.
  if (st.st_ino != cgroup_id) {
    // Handle ids and inode numbers disagree (not seen on 64-bit kernels). Inode numbers are the
    // contract with the BPF side, so match by them alone: walk.
    error = EINVAL;
    return HandleResult::kUnsupported;
  }

  std::optional<std::string> link = ReadFdLink(fd.get());
  if (!link) {
    error = errno;
    return error == ENOENT ? HandleResult::kUnsupported  // /proc not mounted.
                           : HandleResult::kFailed;
  }
  if (link_prefix_.empty()) {
    path = std::move(*link);
  } else if (*link == link_prefix_) {
    path = "/";
  } else if (link->size() > link_prefix_.size() && link->starts_with(link_prefix_) &&
             (*link)[link_prefix_.size()] == '/') {
    path = link->substr(link_prefix_.size());
  } else {
    return HandleResult::kOutside;  // Outside the tree we were given (a bind-mounted subtree).
  }
  // Between open_by_handle_at and readlink the cgroup may have gone (the link then ends in
  // " (deleted)") or been renamed; one fstatat tells.
  return StillValid(cgroup_id, path) ? HandleResult::kFound : HandleResult::kGone;
}

bool CgroupResolver::IsGone(uint64_t cgroup_id, std::chrono::steady_clock::time_point not_before) {
  {
    std::lock_guard lock(mu_);
    if (auto it = cache_.find(cgroup_id); it != cache_.end() && StillValid(cgroup_id, it->second)) {
      return false;
    }
  }
  if (use_handles_.load(std::memory_order_relaxed)) {
    std::string path;
    int error = 0;
    switch (ResolveByHandle(cgroup_id, path, error)) {
      case HandleResult::kGone:
        return true;
      case HandleResult::kFound: {
        std::lock_guard lock(mu_);
        Remember(cgroup_id, path);
        return false;
      }
      case HandleResult::kOutside:
      case HandleResult::kFailed:
        return false;
      case HandleResult::kUnsupported:
        break;  // PathOf() logs and switches to walking; this answer walks once
    }
  }
  std::lock_guard lock(mu_);
  if (!last_walk_ || *last_walk_ < not_before) {
    Walk();
    last_walk_ = std::chrono::steady_clock::now();
  }
  auto it = index_.find(cgroup_id);
  return it == index_.end() || !StillValid(cgroup_id, it->second);
}

std::optional<std::string> CgroupResolver::ResolveByWalk(uint64_t cgroup_id) {
  const auto lookup = [&]() -> std::optional<std::string> {
    auto it = index_.find(cgroup_id);
    if (it == index_.end() || !StillValid(cgroup_id, it->second)) return std::nullopt;
    Remember(cgroup_id, it->second);
    return it->second;
  };
  if (auto path = lookup()) return path;
  if (last_walk_ && std::chrono::steady_clock::now() - *last_walk_ < options_.min_rescan_interval) {
    return std::nullopt;
  }
  Walk();
  last_walk_ = std::chrono::steady_clock::now();
  return lookup();
}

void CgroupResolver::Walk() {
  std::unordered_map<uint64_t, std::string> index;
  struct stat root_st {};
  if (fstat(root_fd_, &root_st) == 0) index.emplace(root_st.st_ino, "/");

  // Depth-first with an explicit stack of paths and one open directory at a time, so neither the
  // call stack nor the fd table grows with the depth of the tree.
  std::vector<std::string> pending{"/"};
  while (!pending.empty() && index.size() < kMaxWalkEntries) {
    const std::string dir_path = std::move(pending.back());
    pending.pop_back();
    const int dir_fd =
        openat(root_fd_, RelativeTo(dir_path), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dir_fd < 0) continue;  // Removed meanwhile, or too deep for PATH_MAX.
    DIR* dir = fdopendir(dir_fd);
    if (dir == nullptr) {
      close(dir_fd);
      continue;
    }
    const std::string prefix = dir_path == "/" ? "" : dir_path;
    while (const dirent* entry = readdir(dir)) {
      if (entry->d_type != DT_DIR && entry->d_type != DT_UNKNOWN) continue;
      const std::string_view name = entry->d_name;
      if (name == "." || name == "..") continue;
      struct stat st {};
      if (fstatat(dirfd(dir), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0) continue;
      if (!S_ISDIR(st.st_mode) || st.st_dev != root_dev_) continue;  // Not across mounts.
      std::string child = prefix + "/" + std::string(name);
      pending.push_back(child);
      index.emplace(st.st_ino, std::move(child));
      if (index.size() >= kMaxWalkEntries) break;
    }
    closedir(dir);
  }
  index_ = std::move(index);
}

bool CgroupResolver::StillValid(uint64_t cgroup_id, const std::string& path) const {
  struct stat st {};
  return fstatat(root_fd_, RelativeTo(path), &st, AT_SYMLINK_NOFOLLOW) == 0 &&
         S_ISDIR(st.st_mode) && st.st_ino == cgroup_id && st.st_dev == root_dev_;
}

void CgroupResolver::Remember(uint64_t cgroup_id, const std::string& path) {
  if (cache_.size() >= options_.max_cached) cache_.clear();
  cache_.insert_or_assign(cgroup_id, path);
}

}  // namespace kpulse
