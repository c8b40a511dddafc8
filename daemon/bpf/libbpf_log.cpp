#include "bpf/libbpf_log.h"

#include <bpf/libbpf.h>
#include <spdlog/spdlog.h>

#include <cstdarg>
#include <cstdio>
#include <string>

namespace kpulse {

namespace {

int PrintToSpdlog(enum libbpf_print_level level, const char* format, va_list args) {
  const auto spd_level = level == LIBBPF_WARN   ? spdlog::level::warn
                         : level == LIBBPF_INFO ? spdlog::level::debug
                                                : spdlog::level::trace;
  if (!spdlog::should_log(spd_level)) return 0;
  char buffer[1024];
  va_list copy;
  va_copy(copy, args);
  const int length = std::vsnprintf(buffer, sizeof(buffer), format, copy);
  va_end(copy);
  if (length < 0) return length;
  std::string line(buffer, std::min<size_t>(static_cast<size_t>(length), sizeof(buffer) - 1));
  while (!line.empty() && line.back() == '\n') line.pop_back();
  spdlog::log(spd_level, "libbpf: {}", line);
  return length;
}

}  // namespace

void RouteLibbpfLogToSpdlog() { libbpf_set_print(PrintToSpdlog); }

}  // namespace kpulse
