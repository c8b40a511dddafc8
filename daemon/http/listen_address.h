#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <string>
#include <string_view>
#include <tl/expected.hpp>

namespace kpulse {

/// A parsed `host:port` listen address. Accepted forms: "127.0.0.1:10136", "[::1]:10136",
/// "[::]:10136" and ":10136" (every address, IPv4 and IPv6). Host names are not resolved: an
/// exporter should not depend on DNS to start. Port 0 asks the kernel for a free port (tests).
struct ListenAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  bool dual_stack = false;  // ":port": bind [::] with IPV6_V6ONLY off, so IPv4 is served too.
  std::string text;         // As written, for messages.

  int family() const { return storage.ss_family; }
};

/// Parses `text`; on failure returns a one-line reason (without the file/line prefix).
tl::expected<ListenAddress, std::string> ParseListenAddress(std::string_view text);

}  // namespace kpulse
