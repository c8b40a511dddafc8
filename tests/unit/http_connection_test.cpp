// HttpServer connection handling: keep-alive, the connection limit and its 503, the header
// deadline, per-route concurrency bounds, request counters and a bounded Stop().
#include <gtest/gtest.h>
#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "http/http_server.h"
#include "http/listen_address.h"
#include "http_test_client.h"

namespace kpulse {
namespace {

using namespace http_test;  // NOLINT(google-build-using-namespace): test helpers
using Clock = std::chrono::steady_clock;

HttpServer::Options Loopback() {
  HttpServer::Options options;
  auto address = ParseListenAddress("127.0.0.1:0");
  EXPECT_TRUE(address.has_value());
  options.listen.push_back(*address);
  return options;
}

HttpResponse Hello(const HttpRequest&) { return HttpResponse{200, "text/plain", "hello\n"}; }

double MillisecondsSince(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// A gate that handlers wait at until the test opens it (or the server stops).
class Gate {
 public:
  // Waits until Open() or `stop`; returns whether it was opened.
  bool Wait(const std::stop_token& stop) {
    std::unique_lock lock(mutex_);
    ++waiting_;
    changed_.notify_all();
    return changed_.wait(lock, stop, [this] { return open_; });
  }
  void Open() {
    const std::lock_guard lock(mutex_);
    open_ = true;
    changed_.notify_all();
  }
  // Waits up to 5 s until `count` handlers have reached Wait().
  bool AwaitWaiting(int count) {
    std::unique_lock lock(mutex_);
    return changed_.wait_for(lock, std::chrono::seconds(5), [&] { return waiting_ >= count; });
  }

 private:
  std::mutex mutex_;
  std::condition_variable_any changed_;
  int waiting_ = 0;
  bool open_ = false;
};

TEST(HttpConnection, TwoRequestsGoOverOneKeptAliveConnection) {
  HttpServer server(Loopback());
  server.Route("/hello", Hello);
  server.Start();
  const Socket sock = ConnectLoopback(AF_INET, server.BoundPorts().at(0));
  ASSERT_TRUE(sock.valid());

  for (int i = 0; i < 2; ++i) {
    ASSERT_TRUE(SendAll(sock, "GET /hello HTTP/1.1\r\nHost: localhost\r\n\r\n"));
    const std::string raw = ReadOneResponse(sock);
    ASSERT_FALSE(raw.empty()) << "request " << i + 1 << ": the server closed the connection";
    const Reply reply = ParseReply(raw);
    EXPECT_EQ(reply.status, 200);
    EXPECT_EQ(reply.body, "hello\n");
    EXPECT_NE(reply.Header("connection"), "close");
  }
  const HttpStats stats = server.Stats();
  EXPECT_EQ(stats.accepted_connections, 1u);
  EXPECT_EQ((stats.requests.at({"/hello", 200})), 2u);
}

TEST(HttpConnection, ConnectionsOverTheLimitGet503AndAreCounted) {
  HttpServer::Options options = Loopback();
  options.max_connections = 4;
  HttpServer server(std::move(options));
  server.Route("/hello", Hello);
  server.Start();
  const uint16_t port = server.BoundPorts().at(0);

  std::vector<Socket> idle;
  for (int i = 0; i < 4; ++i) idle.push_back(ConnectLoopback(AF_INET, port));
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const Reply over = Fetch(AF_INET, port, "GET", "/hello");
  EXPECT_EQ(over.status, 503);
  EXPECT_EQ(over.Header("connection"), "close");
  EXPECT_EQ(over.Header("retry-after"), "1");
  EXPECT_EQ(server.Stats().rejected_connections, 1u);

  idle.clear();
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(Fetch(AF_INET, port, "GET", "/hello").status, 200);
  EXPECT_EQ(server.Stats().rejected_connections, 1u);
}

// libmicrohttpd's own timeout counts inactivity, so a client sending a header byte every 200 ms
// would keep its connection forever; the header deadline closes it.
TEST(HttpConnection, SlowHeaderClientIsClosedAtTheTimeoutWhileStillSending) {
  HttpServer::Options options = Loopback();
  options.connection_timeout_seconds = 1;
  HttpServer server(std::move(options));
  server.Route("/hello", Hello);
  server.Start();
  const Socket sock = ConnectLoopback(AF_INET, server.BoundPorts().at(0));
  ASSERT_TRUE(sock.valid());

  const std::string header =
      "GET /hello HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + std::string(100, 'x');
  const auto start = Clock::now();
  bool closed = false;
  for (size_t i = 0; i < header.size() && !closed; ++i) {
    closed = send(sock.fd(), &header[i], 1, MSG_NOSIGNAL) != 1;
    char byte = 0;
    const ssize_t got = recv(sock.fd(), &byte, 1, MSG_DONTWAIT);
    closed = closed || got == 0 || (got < 0 && errno != EAGAIN);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  const double elapsed_ms = MillisecondsSince(start);

  EXPECT_TRUE(closed) << "still open after " << elapsed_ms << " ms";
  EXPECT_LT(elapsed_ms, 2500.0);
  EXPECT_EQ(server.Stats().timed_out_connections, 1u);
}

TEST(HttpConnection, BoundedRouteAnswersOne503BeyondMaxConcurrentAndScrapeStaysFast) {
  constexpr unsigned kBound = 3;
  Gate gate;
  HttpServer server(Loopback());
  server.Route(
      "/slow",
      [&gate](const HttpRequest& request) {
        gate.Wait(request.stop);
        return HttpResponse{200, "text/plain", "slow\n"};
      },
      RouteOptions{kBound});
  server.Route("/metrics", Hello);
  server.Start();
  const uint16_t port = server.BoundPorts().at(0);

  std::vector<std::thread> slow;
  std::mutex mutex;
  std::vector<int> statuses;
  for (unsigned i = 0; i < kBound; ++i) {
    slow.emplace_back([&] {
      const int status = Fetch(AF_INET, port, "GET", "/slow").status;
      const std::lock_guard lock(mutex);
      statuses.push_back(status);
    });
  }
  ASSERT_TRUE(gate.AwaitWaiting(kBound));
  const auto extra_start = Clock::now();
  const Reply extra = Fetch(AF_INET, port, "GET", "/slow");
  const double extra_ms = MillisecondsSince(extra_start);
  const auto scrape_start = Clock::now();
  const Reply scrape = Fetch(AF_INET, port, "GET", "/metrics");
  const double scrape_ms = MillisecondsSince(scrape_start);
  gate.Open();
  for (auto& thread : slow) thread.join();

  EXPECT_EQ(extra.status, 503);
  EXPECT_EQ(extra.Header("retry-after"), "1");
  EXPECT_LT(extra_ms, 1000.0);
  EXPECT_EQ(scrape.status, 200);
  EXPECT_LT(scrape_ms, 1000.0);
  EXPECT_EQ(statuses, std::vector<int>(kBound, 200));
  const HttpStats stats = server.Stats();
  EXPECT_EQ((stats.requests.at({"/slow", 503})), 1u);
  EXPECT_EQ((stats.requests.at({"/slow", 200})), kBound);
  // The slots are free again.
  std::thread again([&] { EXPECT_EQ(Fetch(AF_INET, port, "GET", "/slow").status, 200); });
  again.join();
}

TEST(HttpConnection, CountsRequestsByHandlerAndStatus) {
  HttpServer server(Loopback());
  server.Route("/hello", Hello);
  server.Route("/boom", [](const HttpRequest&) -> HttpResponse {
    throw std::runtime_error("handler exploded");
  });
  server.Start();
  const uint16_t port = server.BoundPorts().at(0);

  Fetch(AF_INET, port, "GET", "/hello");
  Fetch(AF_INET, port, "HEAD", "/hello");
  Fetch(AF_INET, port, "GET", "/boom");
  Fetch(AF_INET, port, "GET", "/nope");
  Fetch(AF_INET, port, "GET", "/also-nope");
  Fetch(AF_INET, port, "POST", "/hello", "Content-Length: 0\r\n");

  const HttpStats stats = server.Stats();
  const std::map<std::pair<std::string, unsigned>, uint64_t> expected = {
      {{"/hello", 200}, 2}, {{"/hello", 405}, 1}, {{"/boom", 500}, 1}, {{"other", 404}, 2}};
  EXPECT_EQ(stats.requests, expected);
  EXPECT_EQ(stats.latency.at("/hello").count, 3u);
  EXPECT_EQ(stats.latency.at("other").count, 2u);
  EXPECT_GT(stats.latency.at("/boom").sum_seconds, 0.0);
  EXPECT_EQ(stats.accepted_connections, 6u);
  EXPECT_EQ(stats.rejected_connections, 0u);
}

TEST(HttpConnection, StopReturnsWithin2sWhileAHandlerHonouringTheStopTokenRuns) {
  Gate gate;  // Never opened: the handler returns only because the server stops.
  std::atomic<bool> saw_stop = false;
  HttpServer server(Loopback());
  server.Route("/debug/offcpu", [&](const HttpRequest& request) {
    saw_stop = !gate.Wait(request.stop);
    return HttpResponse{200, "text/plain", "partial\n"};
  });
  server.Start();
  const uint16_t port = server.BoundPorts().at(0);
  Reply reply;
  std::thread client(
      [&reply, port] { reply = Fetch(AF_INET, port, "GET", "/debug/offcpu?seconds=30"); });
  ASSERT_TRUE(gate.AwaitWaiting(1));

  const auto start = Clock::now();
  const bool all_returned = server.Stop();
  const double elapsed_ms = MillisecondsSince(start);
  client.join();

  EXPECT_TRUE(all_returned);
  EXPECT_TRUE(saw_stop);
  // The handler's answer goes out before the connection closes (CI once got an empty reply
  // when Stop() closed the connections right after the handler returned).
  EXPECT_EQ(reply.status, 200);
  EXPECT_EQ(reply.body, "partial\n");
  EXPECT_LT(elapsed_ms, 2000.0);
  EXPECT_TRUE(server.BoundPorts().empty());
  EXPECT_TRUE(server.Stop()) << "a second Stop() does nothing";
}

// A handler that ignores the stop request: Stop() still returns after its grace time, the
// client gets 503, and the destructor waits for the handler.
TEST(HttpConnection, StopAnswers503ForAHandlerThatIgnoresTheStopRequest) {
  std::atomic<bool> entered = false;
  std::atomic<bool> returned = false;
  Reply reply;
  {
    HttpServer server(Loopback());
    server.Route("/stubborn", [&](const HttpRequest&) {
      entered = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      returned = true;
      return HttpResponse{200, "text/plain", "late\n"};
    });
    server.Start();
    const uint16_t port = server.BoundPorts().at(0);
    std::thread client([&reply, port] { reply = Fetch(AF_INET, port, "GET", "/stubborn"); });
    while (!entered) std::this_thread::sleep_for(std::chrono::milliseconds(10));

    const auto start = Clock::now();
    EXPECT_FALSE(server.Stop(std::chrono::milliseconds(200)));
    EXPECT_LT(MillisecondsSince(start), 1000.0);
    client.join();
    EXPECT_FALSE(returned);
    EXPECT_EQ(server.Stats().requests.at({"/stubborn", 503}), 1u);
  }
  EXPECT_TRUE(returned) << "the destructor did not wait for the handler";
  EXPECT_EQ(reply.status, 503);
}

}  // namespace
}  // namespace kpulse
