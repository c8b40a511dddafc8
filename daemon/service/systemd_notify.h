#pragma once

#include <chrono>
#include <optional>
#include <string_view>

namespace kpulse {

/// Talks to the service manager through sd_notify(3). Every call is a no-op when the daemon was
/// not started with NOTIFY_SOCKET (foreground runs). NOTIFY_SOCKET is kept in the environment, so
/// later messages (STOPPING, WATCHDOG) still reach systemd. Not thread-safe: use from main.
class SystemdNotifier {
 public:
  SystemdNotifier();
  /// READY=1 with a one-line STATUS=: at start-up, and at the end of every reload.
  void Ready(std::string_view status) const;
  /// RELOADING=1 with MONOTONIC_USEC=, as a reload begins.
  void Reloading() const;
  void Status(std::string_view status) const;
  void Stopping() const;
  void WatchdogPing() const;
  /// WatchdogSec= of the unit, when systemd expects pings from this process.
  std::optional<std::chrono::microseconds> watchdog_interval() const { return watchdog_; }

 private:
  void Send(std::string_view message) const;
  std::optional<std::chrono::microseconds> watchdog_;
};

}  // namespace kpulse
