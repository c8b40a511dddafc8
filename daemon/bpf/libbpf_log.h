#pragma once

namespace kpulse {

/// Routes libbpf's own log through spdlog: warnings and errors always, libbpf's debug and info
/// output (verifier logs, CO-RE relocations) only when the spdlog level is debug or trace.
/// Process-wide; call once at start-up, before any skeleton is opened.
void RouteLibbpfLogToSpdlog();

}  // namespace kpulse
