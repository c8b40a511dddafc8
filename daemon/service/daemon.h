#pragma once

#include "config/config.h"

namespace kpulse {

/// Runs kpulse until SIGINT or SIGTERM: starts the enabled probes (open, configure, load, attach),
/// registers their collectors, serves HTTP, and tells systemd READY=1 once every enabled probe is
/// attached (or has failed and is not required). Throws std::runtime_error for start-up failures
/// (cannot listen, a required probe failed). Returns the process exit code. Call from main only:
/// it blocks SIGINT/SIGTERM/SIGHUP and waits for them on a signalfd.
int RunDaemon(const Config& config);

}  // namespace kpulse
