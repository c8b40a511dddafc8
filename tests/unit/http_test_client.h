// A tiny blocking HTTP/1.1 client on plain sockets, for the HttpServer tests.
#pragma once

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <map>
#include <string>
#include <string_view>
#include <utility>

namespace kpulse::http_test {

class Socket {
 public:
  explicit Socket(int fd) : fd_(fd) {}
  ~Socket() {
    if (fd_ >= 0) close(fd_);
  }
  Socket(Socket&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  Socket& operator=(Socket&&) = delete;
  Socket(const Socket&) = delete;
  Socket& operator=(const Socket&) = delete;

  int fd() const { return fd_; }
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_;
};

// Connects to 127.0.0.1 or [::1]; reads and writes time out after `timeout_seconds` so a broken
// server fails the test instead of hanging it. Returns an invalid socket (and records a failure) on
// error.
inline Socket ConnectLoopback(int family, uint16_t port, int timeout_seconds = 5) {
  Socket sock(socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock.valid()) {
    ADD_FAILURE() << "socket: " << std::strerror(errno);
    return sock;
  }
  const timeval timeout{timeout_seconds, 0};
  setsockopt(sock.fd(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  setsockopt(sock.fd(), SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof(timeout));
  sockaddr_storage address{};
  socklen_t length = 0;
  if (family == AF_INET) {
    auto* sin = reinterpret_cast<sockaddr_in*>(&address);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    sin->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    length = sizeof(sockaddr_in);
  } else {
    auto* sin6 = reinterpret_cast<sockaddr_in6*>(&address);
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(port);
    sin6->sin6_addr = in6addr_loopback;
    length = sizeof(sockaddr_in6);
  }
  if (connect(sock.fd(), reinterpret_cast<const sockaddr*>(&address), length) != 0) {
    ADD_FAILURE() << "connect to port " << port << ": " << std::strerror(errno);
    return Socket(-1);
  }
  return sock;
}

inline bool SendAll(const Socket& sock, std::string_view data) {
  while (!data.empty()) {
    const ssize_t sent = send(sock.fd(), data.data(), data.size(), MSG_NOSIGNAL);
    if (sent <= 0) {
      ADD_FAILURE() << "send: " << std::strerror(errno);
      return false;
    }
    data.remove_prefix(static_cast<size_t>(sent));
  }
  return true;
}

// Reads until the server closes the connection (the requests say "Connection: close").
inline std::string ReadToEnd(const Socket& sock) {
  std::string data;
  char buffer[16384];
  for (;;) {
    const ssize_t got = recv(sock.fd(), buffer, sizeof(buffer), 0);
    if (got == 0) return data;
    if (got < 0) {
      ADD_FAILURE() << "recv: " << std::strerror(errno);
      return data;
    }
    data.append(buffer, static_cast<size_t>(got));
  }
}

struct Reply {
  int status = 0;                              // 0: no valid reply.
  std::map<std::string, std::string> headers;  // Names in lower case.
  std::string body;

  std::string Header(const std::string& lower_case_name) const {
    const auto it = headers.find(lower_case_name);
    return it == headers.end() ? "" : it->second;
  }
};

inline Reply ParseReply(const std::string& raw) {
  Reply reply;
  const size_t head_end = raw.find("\r\n\r\n");
  if (raw.rfind("HTTP/1.1 ", 0) != 0 || head_end == std::string::npos) {
    ADD_FAILURE() << "not an HTTP/1.1 reply: '" << raw << "'";
    return reply;
  }
  reply.status = std::stoi(raw.substr(9, 3));
  size_t line_start = raw.find("\r\n") + 2;
  while (line_start < head_end) {
    const size_t line_end = raw.find("\r\n", line_start);
    const std::string line = raw.substr(line_start, line_end - line_start);
    const size_t colon = line.find(':');
    if (colon != std::string::npos) {
      std::string name = line.substr(0, colon);
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      const size_t value_start = line.find_first_not_of(' ', colon + 1);
      reply.headers[name] = value_start == std::string::npos ? "" : line.substr(value_start);
    }
    line_start = line_end + 2;
  }
  reply.body = raw.substr(head_end + 4);
  return reply;
}

// One request on a fresh connection. `extra_headers` are complete "Name: value\r\n" lines;
// `body` goes after the header block as it is.
inline Reply Fetch(int family, uint16_t port, std::string_view method, std::string_view target,
                   std::string_view extra_headers = "", std::string_view body = "") {
  const Socket sock = ConnectLoopback(family, port);
  if (!sock.valid()) return {};
  const std::string request = std::string(method) + " " + std::string(target) +
                              " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n" +
                              std::string(extra_headers) + "\r\n" + std::string(body);
  if (!SendAll(sock, request)) return {};
  return ParseReply(ReadToEnd(sock));
}

// Reads one response (headers, then Content-Length bytes of body) and leaves the connection open,
// for keep-alive. Returns an empty string if the server closed the connection or timed out first.
inline std::string ReadOneResponse(const Socket& sock) {
  std::string data;
  char buffer[16384];
  size_t wanted = std::string::npos;
  for (;;) {
    if (wanted == std::string::npos) {
      const size_t head_end = data.find("\r\n\r\n");
      if (head_end != std::string::npos) {
        size_t length = 0;
        std::string lower = data.substr(0, head_end);
        for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
        const size_t field = lower.find("\r\ncontent-length:");
        if (field != std::string::npos) length = std::stoul(lower.substr(field + 17));
        wanted = head_end + 4 + length;
      }
    }
    if (wanted != std::string::npos && data.size() >= wanted) return data;
    const ssize_t got = recv(sock.fd(), buffer, sizeof(buffer), 0);
    if (got <= 0) return "";
    data.append(buffer, static_cast<size_t>(got));
  }
}

}  // namespace kpulse::http_test
