#include "service/systemd_notify.h"

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>
#include <time.h>

#include <cstdint>
#include <cstring>
#include <string>

namespace kpulse {

SystemdNotifier::SystemdNotifier() {
  uint64_t usec = 0;
  // > 0 only when WATCHDOG_USEC is set and WATCHDOG_PID is unset or ours.
  if (sd_watchdog_enabled(0, &usec) > 0 && usec > 0) {
    watchdog_ = std::chrono::microseconds(usec);
  }
}

void SystemdNotifier::Send(std::string_view message) const {
  const std::string text(message);
  const int result = sd_notify(0, text.c_str());
  if (result < 0) spdlog::warn("sd_notify({}) failed: {}", text, std::strerror(-result));
}

void SystemdNotifier::Ready(std::string_view status) const {
  Send("READY=1\nSTATUS=" + std::string(status));
}

void SystemdNotifier::Reloading() const {
  // systemd 253+ (Type=notify-reload) wants the CLOCK_MONOTONIC time of the reload with it;
  // older ones ignore the field.
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  const uint64_t usec =
      static_cast<uint64_t>(now.tv_sec) * 1000000 + static_cast<uint64_t>(now.tv_nsec) / 1000;
  Send("RELOADING=1\nMONOTONIC_USEC=" + std::to_string(usec));
}

void SystemdNotifier::Status(std::string_view status) const {
  Send("STATUS=" + std::string(status));
}

void SystemdNotifier::Stopping() const { Send("STOPPING=1"); }

void SystemdNotifier::WatchdogPing() const { Send("WATCHDOG=1"); }

}  // namespace kpulse
