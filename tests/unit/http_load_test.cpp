// HttpServer under hostile connection load: 200 idle, 200 slow-header or 200 in-flight clients
// must not keep a scrape of /metrics from being answered within 1 s (docs/operations.md, "HTTP
// connection handling", records the figures these tests print).
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "http/http_server.h"
#include "http/listen_address.h"
#include "http_test_client.h"

namespace kpulse {
namespace {

using namespace http_test;  // NOLINT(google-build-using-namespace): test helpers
using Clock = std::chrono::steady_clock;

constexpr int kClients = 200;

// A server on 127.0.0.1 with default options and a fast /metrics.
std::unique_ptr<HttpServer> StartServer(const std::function<void(HttpServer&)>& routes = {}) {
  HttpServer::Options options;
  auto address = ParseListenAddress("127.0.0.1:0");
  EXPECT_TRUE(address.has_value());
  options.listen.push_back(*address);
  auto server = std::make_unique<HttpServer>(std::move(options));
  server->Route("/metrics", [](const HttpRequest&) {
    return HttpResponse{200, "text/plain", "kpulse_up 1\n"};
  });
  if (routes) routes(*server);
  server->Start();
  return server;
}

struct Scrape {
  int status = 0;  // 0: no valid reply (refused, closed or timed out).
  double ms = 0;
};

// One GET /metrics on a fresh connection, timed from connect() to the end of the reply. The
// socket times out after 30 s, so a slow server is measured rather than cut short.
Scrape TimedScrape(uint16_t port) {
  Scrape scrape;
  const auto start = Clock::now();
  {
    const Socket sock = ConnectLoopback(AF_INET, port, 30);
    if (sock.valid() &&
        SendAll(sock, "GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")) {
      std::string raw;
      char buffer[4096];
      for (;;) {
        const ssize_t got = recv(sock.fd(), buffer, sizeof(buffer), 0);
        if (got <= 0) break;
        raw.append(buffer, static_cast<size_t>(got));
      }
      if (raw.rfind("HTTP/1.1 ", 0) == 0) scrape.status = ParseReply(raw).status;
    }
  }
  scrape.ms = std::chrono::duration<double, std::milli>(Clock::now() - start).count();
  return scrape;
}

std::vector<Socket> Connect(uint16_t port, int count) {
  std::vector<Socket> sockets;
  for (int i = 0; i < count; ++i) sockets.push_back(ConnectLoopback(AF_INET, port, 30));
  return sockets;
}

void Report(const char* what, const Scrape& scrape) {
  std::cout << "[ measured ] scrape with " << what << ": status " << scrape.status << " in "
            << scrape.ms << " ms\n";
}

TEST(HttpServerLoad, ScrapeAnsweredWithin1sWhile200IdleConnectionsAreOpen) {
  const auto server = StartServer();
  const uint16_t port = server->BoundPorts().at(0);
  const std::vector<Socket> idle = Connect(port, kClients);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // Let the server take them in.

  const Scrape scrape = TimedScrape(port);
  Report("200 idle connections", scrape);
  EXPECT_EQ(scrape.status, 200);
  EXPECT_LT(scrape.ms, 1000.0);
}

TEST(HttpServerLoad, ScrapeAnsweredWithin1sWhile200ClientsSendHeadersSlowly) {
  const auto server = StartServer();
  const uint16_t port = server->BoundPorts().at(0);
  const std::vector<Socket> slow = Connect(port, kClients);
  // Each client sends one more byte of a request header every 300 ms and never finishes it.
  const std::string header =
      "GET /metrics HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + std::string(1000, 'x');
  std::atomic<bool> done = false;
  std::thread trickle([&] {
    for (size_t i = 0; !done && i < header.size(); ++i) {
      for (const Socket& sock : slow) send(sock.fd(), &header[i], 1, MSG_NOSIGNAL | MSG_DONTWAIT);
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(1000));

  const Scrape scrape = TimedScrape(port);
  done = true;
  trickle.join();
  Report("200 slow-header clients", scrape);
  EXPECT_EQ(scrape.status, 200);
  EXPECT_LT(scrape.ms, 1000.0);
}

TEST(HttpServerLoad, ScrapeAnsweredWithin1sWhile200RequestsAreInFlight) {
  std::atomic<int> running = 0;
  const auto server = StartServer([&running](HttpServer& s) {
    s.Route("/slow", [&running](const HttpRequest&) {
      ++running;
      std::this_thread::sleep_for(std::chrono::seconds(3));
      --running;
      return HttpResponse{200, "text/plain", "slow\n"};
    });
  });
  const uint16_t port = server->BoundPorts().at(0);
  const std::vector<Socket> clients = Connect(port, kClients);
  for (const Socket& sock : clients) {
    SendAll(sock, "GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const int in_flight = running;

  const Scrape scrape = TimedScrape(port);
  Report(std::to_string(in_flight).append(" slow requests in flight").c_str(), scrape);
  EXPECT_EQ(scrape.status, 200);
  EXPECT_LT(scrape.ms, 1000.0);
}

}  // namespace
}  // namespace kpulse
