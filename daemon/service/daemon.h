#pragma once

#include "config/config.h"
#include "http/web_config.h"

namespace kpulse {

/// Runs kpulse until SIGINT or SIGTERM: starts the enabled probes (open, configure, load, attach),
/// registers their collectors, serves HTTP, and tells systemd READY=1 once every enabled probe is
/// attached (or has failed and is not required). Throws std::runtime_error for start-up failures
/// (cannot listen, a required probe failed). Returns the process exit code. Call from main only:
/// it blocks SIGINT/SIGTERM/SIGHUP and waits for them on a signalfd. `web` (--web.config.file)
/// turns on TLS and basic auth for the HTTP server; the default serves plain HTTP.
int RunDaemon(const Config& config, const WebConfig& web = {});

}  // namespace kpulse
