// kpulse: eBPF kernel events as Prometheus metrics. Thin entry point: argument handling and the
// exception boundary; everything else lives in kpulse_lib.
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <string_view>

#include "config/config.h"
#include "http/web_config.h"
#include "service/daemon.h"
#include "util/memory.h"
#include "version.h"

namespace {

constexpr const char* kDefaultConfig = "/etc/kpulse/kpulse.yaml";
constexpr int kExitRuntimeError = 1;
constexpr int kExitUsageOrConfig = 2;
constexpr std::string_view kWebConfigFlag = "--web.config.file";

void PrintUsage(std::FILE* out) {
  std::fprintf(out,
               "usage: kpulse [--config FILE]    run the daemon (default %s)\n"
               "       kpulse --check-config FILE validate FILE and exit\n"
               "       kpulse --version\n"
               "options:\n"
               "  --web.config.file FILE  TLS and basic auth (exporter-toolkit web-config.yml);\n"
               "                          validated with --check-config too\n",
               kDefaultConfig);
}

}  // namespace

int main(int argc, char** argv) {
  kpulse::ReturnLargeBuffersToTheSystem();
  std::string config_path = kDefaultConfig;
  bool check_only = false;
  std::string web_config_path;  // Empty: plain HTTP, no authentication.
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--version") {
      std::printf("kpulse %s\n", kpulse::kVersion);
      return 0;
    }
    if (arg == "--help" || arg == "-h") {
      PrintUsage(stdout);
      return 0;
    }
    if ((arg == "--config" || arg == "--check-config") && i + 1 < argc) {
      check_only = arg == "--check-config";
      config_path = argv[++i];
      continue;
    }
    // Both spellings node_exporter accepts: "--web.config.file FILE" and "--web.config.file=FILE".
    if (arg == kWebConfigFlag && i + 1 < argc) {
      web_config_path = argv[++i];
      continue;
    }
    if (arg.size() > kWebConfigFlag.size() + 1 &&
        arg.rfind(std::string(kWebConfigFlag) + "=", 0) == 0) {
      web_config_path = arg.substr(kWebConfigFlag.size() + 1);
      continue;
    }
    std::fprintf(stderr, "kpulse: unknown or incomplete argument '%s'\n", arg.c_str());
    PrintUsage(stderr);
    return kExitUsageOrConfig;
  }

  kpulse::Config config;
  try {
    config = kpulse::LoadConfigFile(config_path);
  } catch (const kpulse::ConfigError& e) {
    std::fprintf(stderr, "kpulse: %s\n", e.what());
    return kExitUsageOrConfig;
  }
  kpulse::WebConfig web_config;
  if (!web_config_path.empty()) {
    try {
      web_config = kpulse::LoadWebConfigFile(web_config_path);
    } catch (const kpulse::WebConfigError& e) {
      std::fprintf(stderr, "kpulse: %s\n", e.what());
      return kExitUsageOrConfig;
    }
  }
  if (check_only) {
    std::printf("%s: OK\n", config_path.c_str());
    if (!web_config_path.empty()) std::printf("%s: OK\n", web_config_path.c_str());
    return 0;
  }

  auto logger = spdlog::stderr_color_mt("kpulse");
  spdlog::set_default_logger(logger);
  spdlog::set_level(config.log_level);
  try {
    return kpulse::RunDaemon(config, web_config);
  } catch (const std::exception& e) {
    spdlog::critical("{}", e.what());
    return kExitRuntimeError;
  }
}
