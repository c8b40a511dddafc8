#include "http/listen_address.h"

#include <arpa/inet.h>

#include <charconv>
#include <cstring>

namespace kpulse {

namespace {

tl::expected<uint16_t, std::string> ParsePort(std::string_view text) {
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value > 65535) {
    return tl::unexpected("port must be a number from 0 to 65535, got '" + std::string(text) + "'");
  }
  return static_cast<uint16_t>(value);
}

}  // namespace

tl::expected<ListenAddress, std::string> ParseListenAddress(std::string_view text) {
  ListenAddress result;
  result.text = std::string(text);
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos) {
    return tl::unexpected("expected host:port, got '" + std::string(text) + "'");
  }
  auto port = ParsePort(text.substr(colon + 1));
  if (!port) return tl::unexpected(port.error());
  std::string_view host = text.substr(0, colon);

  if (host.empty()) {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&result.storage);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_addr = in6addr_any;
    sin6->sin6_port = htons(*port);
    result.length = sizeof(sockaddr_in6);
    result.dual_stack = true;
    return result;
  }
  if (host.front() == '[') {
    if (host.size() < 3 || host.back() != ']') {
      return tl::unexpected("malformed IPv6 address '" + std::string(host) + "', expected [addr]");
    }
    const std::string literal(host.substr(1, host.size() - 2));
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&result.storage);
    if (inet_pton(AF_INET6, literal.c_str(), &sin6->sin6_addr) != 1) {
      return tl::unexpected("'" + literal + "' is not an IPv6 address");
    }
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(*port);
    result.length = sizeof(sockaddr_in6);
    return result;
  }
  const std::string literal(host);
  auto* sin = reinterpret_cast<sockaddr_in*>(&result.storage);
  if (inet_pton(AF_INET, literal.c_str(), &sin->sin_addr) != 1) {
    return tl::unexpected("'" + literal +
                          "' is not an IPv4 address (IPv6 needs brackets: [::1]:10136; "
                          "host names are not resolved)");
  }
  sin->sin_family = AF_INET;
  sin->sin_port = htons(*port);
  result.length = sizeof(sockaddr_in);
  return result;
}

}  // namespace kpulse
