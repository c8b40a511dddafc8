#include "config/config.h"

#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <string>

namespace kpulse {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

constexpr char kSource[] = "test.yaml";

// The what() of the ConfigError that parsing `yaml` throws, or a note that none was thrown.
std::string ErrorOf(const std::string& yaml) {
  try {
    ParseConfig(yaml, kSource);
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "<no error>";
}

void ExpectSameListenAddress(const ListenAddress& actual, const ListenAddress& expected) {
  EXPECT_EQ(actual.text, expected.text);
  EXPECT_EQ(actual.family(), expected.family());
  EXPECT_EQ(actual.dual_stack, expected.dual_stack);
  ASSERT_EQ(actual.length, expected.length);
  EXPECT_EQ(std::memcmp(&actual.storage, &expected.storage, actual.length), 0);
}

// Field by field, except `source`.
void ExpectSameSettings(const Config& actual, const Config& expected) {
  EXPECT_EQ(actual.log_level, expected.log_level);
  ASSERT_EQ(actual.http.listen_addresses.size(), expected.http.listen_addresses.size());
  for (size_t i = 0; i < actual.http.listen_addresses.size(); ++i) {
    ExpectSameListenAddress(actual.http.listen_addresses[i], expected.http.listen_addresses[i]);
  }
  EXPECT_EQ(actual.http.connection_timeout_seconds, expected.http.connection_timeout_seconds);
  EXPECT_EQ(actual.http.max_connections, expected.http.max_connections);
  const RetransConfig& a = actual.tcp_retransmit;
  const RetransConfig& e = expected.tcp_retransmit;
  EXPECT_EQ(a.enabled, e.enabled);
  EXPECT_EQ(a.required, e.required);
  EXPECT_EQ(a.hook, e.hook);
  EXPECT_EQ(a.max_flows, e.max_flows);
  EXPECT_EQ(a.max_cgroups, e.max_cgroups);
  EXPECT_EQ(a.flow_labels, e.flow_labels);
  EXPECT_EQ(a.fold_ephemeral_ports, e.fold_ephemeral_ports);
  EXPECT_EQ(a.netns_label, e.netns_label);
  const RunqueueConfig& ar = actual.runqueue_latency;
  const RunqueueConfig& er = expected.runqueue_latency;
  EXPECT_EQ(ar.enabled, er.enabled);
  EXPECT_EQ(ar.required, er.required);
  EXPECT_EQ(ar.hook, er.hook);
  EXPECT_EQ(ar.max_cgroups, er.max_cgroups);
  EXPECT_EQ(ar.max_tasks, er.max_tasks);
  EXPECT_EQ(ar.per_cpu, er.per_cpu);
  EXPECT_EQ(actual.bpf_stats, expected.bpf_stats);
  EXPECT_EQ(actual.cgroups.depth, expected.cgroups.depth);
  EXPECT_EQ(actual.cgroups.allow, expected.cgroups.allow);
  EXPECT_EQ(actual.cgroups.deny, expected.cgroups.deny);
  EXPECT_EQ(actual.cgroups.sweep_interval_seconds, expected.cgroups.sweep_interval_seconds);
  EXPECT_EQ(actual.series.max_series_per_family, expected.series.max_series_per_family);
  EXPECT_EQ(actual.series.idle_ttl_seconds, expected.series.idle_ttl_seconds);
  const OffcpuConfig& ao = actual.offcpu;
  const OffcpuConfig& eo = expected.offcpu;
  EXPECT_EQ(ao.enabled, eo.enabled);
  EXPECT_EQ(ao.required, eo.required);
  EXPECT_EQ(ao.hook, eo.hook);
  EXPECT_EQ(ao.min_block_us, eo.min_block_us);
  EXPECT_EQ(ao.max_cgroups, eo.max_cgroups);
  EXPECT_EQ(ao.max_tasks, eo.max_tasks);
  EXPECT_EQ(ao.stacks.enabled, eo.stacks.enabled);
  EXPECT_EQ(ao.stacks.user, eo.stacks.user);
  EXPECT_EQ(ao.stacks.min_block_us, eo.stacks.min_block_us);
  EXPECT_EQ(ao.stacks.max_stacks, eo.stacks.max_stacks);
  EXPECT_EQ(ao.stacks.max_entries, eo.stacks.max_entries);
}

// A file under the test temp dir, removed when the object goes.
class TempFile {
 public:
  TempFile(const std::string& name, const std::string& content)
      : path_(::testing::TempDir() + "kpulse_config_test_" + std::to_string(::getpid()) + "_" +
              name) {
    std::ofstream(path_, std::ios::binary) << content;
  }
  ~TempFile() { ::unlink(path_.c_str()); }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ---------------------------------------------------------------------------------------------
// Defaults

TEST(ConfigDefaults, DefaultConfigMatchesDocumentedValues) {
  const Config config = DefaultConfig();
  EXPECT_EQ(config.source, "");
  EXPECT_EQ(config.log_level, spdlog::level::info);
  ASSERT_EQ(config.http.listen_addresses.size(), 1u);
  EXPECT_EQ(config.http.listen_addresses[0].text, "127.0.0.1:10136");
  EXPECT_EQ(config.http.listen_addresses[0].family(), AF_INET);
  EXPECT_EQ(config.http.connection_timeout_seconds, 10u);
  EXPECT_EQ(config.http.max_connections, 512u);
  EXPECT_TRUE(config.tcp_retransmit.enabled);
  EXPECT_FALSE(config.tcp_retransmit.required);
  EXPECT_EQ(config.tcp_retransmit.hook, RetransHook::kAuto);
  EXPECT_EQ(config.tcp_retransmit.max_flows, 16384u);
  EXPECT_EQ(config.tcp_retransmit.max_cgroups, 4096u);
  EXPECT_EQ(config.tcp_retransmit.flow_labels, FlowLabels::kFull);
  EXPECT_TRUE(config.tcp_retransmit.fold_ephemeral_ports);
  EXPECT_FALSE(config.tcp_retransmit.netns_label);
}

TEST(ConfigDefaults, EmptyTextGivesDefaults) {
  const Config config = ParseConfig("", kSource);
  ExpectSameSettings(config, DefaultConfig());
  EXPECT_EQ(config.source, kSource);
}

TEST(ConfigDefaults, CommentOnlyTextGivesDefaults) {
  const Config config = ParseConfig("# nothing here\n\n   # still nothing\n", kSource);
  ExpectSameSettings(config, DefaultConfig());
  EXPECT_EQ(config.source, kSource);
}

TEST(ConfigDefaults, EmptySectionsKeepDefaults) {
  ExpectSameSettings(ParseConfig("http:\nprobes:\n  tcp_retransmit:\n", kSource), DefaultConfig());
}

TEST(ConfigDefaults, TrailingDocumentMarkerIsAccepted) {
  EXPECT_EQ(ParseConfig("log_level: warn\n---\n", kSource).log_level, spdlog::level::warn);
}

TEST(ConfigDefaults, SeveralEmptyDocumentsAreAccepted) {
  ExpectSameSettings(ParseConfig("---\n---\n...\n---\n", kSource), DefaultConfig());
}

TEST(ConfigDefaults, ShippedConfigFileEqualsDefaults) {
#ifndef KPULSE_SOURCE_DIR
  GTEST_SKIP() << "KPULSE_SOURCE_DIR is not defined for this test binary";
#else
  const std::string path = KPULSE_SOURCE_DIR "/config/kpulse.yaml";
  const Config config = LoadConfigFile(path);
  ExpectSameSettings(config, DefaultConfig());
  EXPECT_EQ(config.source, path);
#endif
}

// Export-side cgroup and series settings.

TEST(ConfigParse, CgroupsAndSeriesFields) {
  const Config config = ParseConfig(
      "cgroups:\n"
      "  depth: 3\n"
      "  allow: [\"/kubepods\\\\.slice/.*\"]\n"
      "  deny: [\"/user\\\\.slice/.*\", \"/init\\\\.scope\"]\n"
      "  sweep_interval_seconds: 30\n"
      "series:\n"
      "  max_series_per_family: 20000\n"
      "  idle_ttl_seconds: 0\n",
      kSource);
  EXPECT_EQ(config.cgroups.depth, 3u);
  EXPECT_EQ(config.cgroups.allow, std::vector<std::string>{"/kubepods\\.slice/.*"});
  EXPECT_EQ(config.cgroups.deny,
            (std::vector<std::string>{"/user\\.slice/.*", "/init\\.scope"}));
  EXPECT_EQ(config.cgroups.sweep_interval_seconds, 30u);
  EXPECT_EQ(config.series.max_series_per_family, 20000u);
  EXPECT_EQ(config.series.idle_ttl_seconds, 0u);
}

TEST(ConfigErrors, InvalidCgroupRegexNamesTheEntry) {
  EXPECT_THAT(ErrorOf("cgroups:\n  deny: [\"/ok\", \"(\"]\n"),
              StartsWith("test.yaml:2:17: cgroups.deny[1]: invalid regex \"(\": "));
}

TEST(ConfigErrors, CgroupRegexesMustBeASequenceOfStrings) {
  EXPECT_EQ(ErrorOf("cgroups:\n  allow: /a\n"),
            "test.yaml:2:10: cgroups.allow: must be a sequence of regexes, got /a");
  EXPECT_EQ(ErrorOf("cgroups:\n  allow: [[1]]\n"),
            "test.yaml:2:11: cgroups.allow[0]: must be a regex string, got a sequence");
}

TEST(ConfigErrors, SeriesCapAndSweepIntervalRanges) {
  EXPECT_EQ(ErrorOf("series:\n  max_series_per_family: 15\n"),
            "test.yaml:2:26: series.max_series_per_family: must be an integer from 16 to "
            "10000000, got 15");
  EXPECT_EQ(ErrorOf("cgroups:\n  sweep_interval_seconds: 0\n"),
            "test.yaml:2:27: cgroups.sweep_interval_seconds: must be an integer from 1 to 3600, "
            "got 0");
}

// Run-queue latency probe and bpf_stats.

TEST(ConfigParse, RunqueueLatencyFields) {
  const Config config = ParseConfig(
      "bpf_stats: true\n"
      "probes:\n"
      "  runqueue_latency:\n"
      "    enabled: false\n"
      "    required: true\n"
      "    hook: wakeup\n"
      "    max_cgroups: 100\n"
      "    max_tasks: 2048\n"
      "    per_cpu: true\n",
      kSource);
  EXPECT_TRUE(config.bpf_stats);
  EXPECT_FALSE(config.runqueue_latency.enabled);
  EXPECT_TRUE(config.runqueue_latency.required);
  EXPECT_EQ(config.runqueue_latency.hook, SchedHook::kWakeup);
  EXPECT_EQ(config.runqueue_latency.max_cgroups, 100u);
  EXPECT_EQ(config.runqueue_latency.max_tasks, 2048u);
  EXPECT_TRUE(config.runqueue_latency.per_cpu);
}

TEST(ConfigParse, OffcpuFields) {
  const Config config = ParseConfig(
      "probes:\n"
      "  offcpu:\n"
      "    enabled: true\n"
      "    required: true\n"
      "    hook: wakeup\n"
      "    min_block_us: 50\n"
      "    max_cgroups: 64\n"
      "    max_tasks: 4096\n"
      "    stacks:\n"
      "      enabled: true\n"
      "      user: true\n"
      "      min_block_us: 0\n"
      "      max_stacks: 128\n"
      "      max_entries: 256\n",
      kSource);
  const OffcpuConfig& offcpu = config.offcpu;
  EXPECT_TRUE(offcpu.required);
  EXPECT_EQ(offcpu.hook, SchedHook::kWakeup);
  EXPECT_EQ(offcpu.min_block_us, 50u);
  EXPECT_EQ(offcpu.max_cgroups, 64u);
  EXPECT_EQ(offcpu.max_tasks, 4096u);
  EXPECT_TRUE(offcpu.stacks.enabled);
  EXPECT_TRUE(offcpu.stacks.user);
  EXPECT_EQ(offcpu.stacks.min_block_us, 0u);
  EXPECT_EQ(offcpu.stacks.max_stacks, 128u);
  EXPECT_EQ(offcpu.stacks.max_entries, 256u);
  EXPECT_EQ(EffectiveSchedHook(config), SchedHook::kWakeup) << "runqueue_latency.hook is auto";
}

TEST(ConfigErrors, SchedulerProbesMustNotNameDifferentHooks) {
  try {
    ParseConfig("probes:\n  runqueue_latency:\n    hook: sched_info\n  offcpu:\n    hook: wakeup\n",
                kSource);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(),
                 "test.yaml:5:11: probes.offcpu.hook: must equal probes.runqueue_latency.hook "
                 "(sched_info) or be auto: both probes share one sched_switch program");
  }
}

TEST(ConfigParse, DifferentHooksAreFineWhenOneSchedulerProbeIsOff) {
  const Config config = ParseConfig(
      "probes:\n  runqueue_latency:\n    enabled: false\n    hook: sched_info\n"
      "  offcpu:\n    hook: wakeup\n",
      kSource);
  EXPECT_EQ(EffectiveSchedHook(config), SchedHook::kWakeup);
}

TEST(ConfigErrors, RunqueueHookNamesTheAllowedValues) {
  try {
    ParseConfig("probes:\n  runqueue_latency:\n    hook: fentry\n", kSource);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("test.yaml:3:11: probes.runqueue_latency.hook:"));
    EXPECT_THAT(e.what(), HasSubstr("auto, sched_info, wakeup"));
  }
}

TEST(ConfigErrors, RunqueueMaxTasksOutOfRange) {
  try {
    ParseConfig("probes:\n  runqueue_latency:\n    max_tasks: 10\n", kSource);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), HasSubstr("test.yaml:3:16: probes.runqueue_latency.max_tasks: must be an "
                                    "integer from 1024 to 4194304, got 10"));
  }
}

// ---------------------------------------------------------------------------------------------
// Each field

TEST(ConfigParse, LogLevelAcceptsEveryDocumentedName) {
  EXPECT_EQ(ParseConfig("log_level: trace", kSource).log_level, spdlog::level::trace);
  EXPECT_EQ(ParseConfig("log_level: debug", kSource).log_level, spdlog::level::debug);
  EXPECT_EQ(ParseConfig("log_level: info", kSource).log_level, spdlog::level::info);
  EXPECT_EQ(ParseConfig("log_level: warn", kSource).log_level, spdlog::level::warn);
  EXPECT_EQ(ParseConfig("log_level: error", kSource).log_level, spdlog::level::err);
}

TEST(ConfigParse, ListenAddressesReplaceTheDefault) {
  const Config config =
      ParseConfig("http:\n  listen_addresses:\n    - \"[::1]:9100\"\n    - :9101\n", kSource);
  ASSERT_EQ(config.http.listen_addresses.size(), 2u);
  EXPECT_EQ(config.http.listen_addresses[0].text, "[::1]:9100");
  EXPECT_EQ(config.http.listen_addresses[0].family(), AF_INET6);
  EXPECT_FALSE(config.http.listen_addresses[0].dual_stack);
  EXPECT_EQ(config.http.listen_addresses[1].text, ":9101");
  EXPECT_TRUE(config.http.listen_addresses[1].dual_stack);
}

TEST(ConfigParse, ConnectionTimeoutSeconds) {
  EXPECT_EQ(ParseConfig("http: {connection_timeout_seconds: 300}", kSource)
                .http.connection_timeout_seconds,
            300u);
}

TEST(ConfigParse, MaxConnections) {
  EXPECT_EQ(ParseConfig("http: {max_connections: 1}", kSource).http.max_connections, 1u);
}

TEST(ConfigParse, RetransBooleans) {
  const Config config = ParseConfig(
      "probes:\n"
      "  tcp_retransmit:\n"
      "    enabled: false\n"
      "    required: true\n"
      "    fold_ephemeral_ports: false\n"
      "    netns_label: true\n",
      kSource);
  EXPECT_FALSE(config.tcp_retransmit.enabled);
  EXPECT_TRUE(config.tcp_retransmit.required);
  EXPECT_FALSE(config.tcp_retransmit.fold_ephemeral_ports);
  EXPECT_TRUE(config.tcp_retransmit.netns_label);
}

TEST(ConfigParse, BooleansAcceptCoreSchemaCapitalisation) {
  const Config config =
      ParseConfig("probes: {tcp_retransmit: {required: True, enabled: FALSE}}", kSource);
  EXPECT_TRUE(config.tcp_retransmit.required);
  EXPECT_FALSE(config.tcp_retransmit.enabled);
}

TEST(ConfigParse, RetransHookValues) {
  EXPECT_EQ(ParseConfig("probes: {tcp_retransmit: {hook: auto}}", kSource).tcp_retransmit.hook,
            RetransHook::kAuto);
  EXPECT_EQ(ParseConfig("probes: {tcp_retransmit: {hook: tp_btf}}", kSource).tcp_retransmit.hook,
            RetransHook::kTpBtf);
  EXPECT_EQ(
      ParseConfig("probes: {tcp_retransmit: {hook: tracepoint}}", kSource).tcp_retransmit.hook,
      RetransHook::kTracepoint);
}

TEST(ConfigParse, QuotedEnumValueIsAccepted) {
  EXPECT_EQ(
      ParseConfig("probes: {tcp_retransmit: {hook: \"tp_btf\"}}", kSource).tcp_retransmit.hook,
      RetransHook::kTpBtf);
}

TEST(ConfigParse, FlowLabelsValues) {
  const auto parse = [](const std::string& value) {
    return ParseConfig("probes: {tcp_retransmit: {flow_labels: " + value + "}}", kSource)
        .tcp_retransmit.flow_labels;
  };
  EXPECT_EQ(parse("full"), FlowLabels::kFull);
  EXPECT_EQ(parse("remote"), FlowLabels::kRemote);
  EXPECT_EQ(parse("none"), FlowLabels::kNone);
}

TEST(ConfigParse, MapSizesAcceptTheirBounds) {
  const Config low =
      ParseConfig("probes: {tcp_retransmit: {max_flows: 16, max_cgroups: 16}}", kSource);
  EXPECT_EQ(low.tcp_retransmit.max_flows, 16u);
  EXPECT_EQ(low.tcp_retransmit.max_cgroups, 16u);
  const Config high =
      ParseConfig("probes: {tcp_retransmit: {max_flows: 1048576, max_cgroups: 1048576}}", kSource);
  EXPECT_EQ(high.tcp_retransmit.max_flows, 1048576u);
  EXPECT_EQ(high.tcp_retransmit.max_cgroups, 1048576u);
}

TEST(ConfigParse, ToStringGivesYamlSpelling) {
  EXPECT_EQ(ToString(RetransHook::kAuto), "auto");
  EXPECT_EQ(ToString(RetransHook::kTpBtf), "tp_btf");
  EXPECT_EQ(ToString(RetransHook::kTracepoint), "tracepoint");
  EXPECT_EQ(ToString(FlowLabels::kFull), "full");
  EXPECT_EQ(ToString(FlowLabels::kRemote), "remote");
  EXPECT_EQ(ToString(FlowLabels::kNone), "none");
}

// ---------------------------------------------------------------------------------------------
// Errors: FILE:LINE:COLUMN: KEY.PATH: reason, one line, first error only.

TEST(ConfigErrors, YamlSyntaxError) {
  EXPECT_EQ(ErrorOf("http:\n  max_connections: 5\n bad: 1\n"),
            "test.yaml:3:2: YAML syntax error: end of map not found");
}

TEST(ConfigErrors, UnclosedFlowSequence) {
  EXPECT_EQ(ErrorOf("http:\n  listen_addresses: [\"127.0.0.1:1\"\n"),
            "test.yaml:3:1: YAML syntax error: end of sequence flow not found");
}

// yaml-cpp 0.7's LoadAll() loops forever, allocating, on these (jbeder/yaml-cpp#1040).
TEST(ConfigErrors, StrayCommaIsASyntaxErrorNotAHang) {
  EXPECT_EQ(ErrorOf(",\n"), "test.yaml:1:1: YAML syntax error: unexpected ','");
}

TEST(ConfigErrors, StrayCommaInSecondDocumentIsASyntaxError) {
  EXPECT_EQ(ErrorOf("log_level: info\n---\n, x\n"),
            "test.yaml:3:1: YAML syntax error: unexpected ','");
}

TEST(ConfigErrors, UnknownTopLevelKey) {
  EXPECT_EQ(ErrorOf("log_level: info\nloglevel: debug\n"),
            "test.yaml:2:1: loglevel: unknown key (known: log_level, http, probes, bpf_stats, cgroups, series, privileges)");
}

TEST(ConfigErrors, UnknownHttpKey) {
  EXPECT_EQ(ErrorOf("http:\n  listen_adresses: [\"127.0.0.1:10136\"]\n"),
            "test.yaml:2:3: http.listen_adresses: unknown key (known: listen_addresses, "
            "connection_timeout_seconds, max_connections)");
}

TEST(ConfigErrors, UnknownProbe) {
  EXPECT_EQ(ErrorOf("probes:\n  runqlat: {}\n"),
            "test.yaml:2:3: probes.runqlat: unknown key (known: tcp_retransmit, runqueue_latency, "
            "offcpu)");
}

TEST(ConfigErrors, UnknownRetransKey) {
  EXPECT_EQ(ErrorOf("probes:\n  tcp_retransmit:\n    max_flow: 100\n"),
            "test.yaml:3:5: probes.tcp_retransmit.max_flow: unknown key (known: enabled, required, "
            "hook, max_flows, max_cgroups, flow_labels, fold_ephemeral_ports, netns_label)");
}

TEST(ConfigErrors, DuplicateKey) {
  EXPECT_EQ(ErrorOf("http:\n  max_connections: 5\n  max_connections: 6\n"),
            "test.yaml:3:3: http.max_connections: duplicate key (first set on line 2)");
}

TEST(ConfigErrors, DuplicateSection) {
  EXPECT_EQ(ErrorOf("http: {}\nlog_level: info\nhttp: {}\n"),
            "test.yaml:3:1: http: duplicate key (first set on line 1)");
}

TEST(ConfigErrors, NonScalarKey) {
  EXPECT_EQ(ErrorOf("http:\n  ? [a, b]\n  : 1\n"),
            "test.yaml:2:5: http: keys must be strings, got a sequence");
}

TEST(ConfigErrors, TopLevelSequence) {
  EXPECT_EQ(ErrorOf("- log_level: info\n"),
            "test.yaml:1:1: the top level must be a map of settings, got a sequence");
}

TEST(ConfigErrors, TopLevelScalar) {
  EXPECT_EQ(ErrorOf("log_level=info\n"),
            "test.yaml:1:1: the top level must be a map of settings, got log_level=info");
}

TEST(ConfigErrors, SecondDocument) {
  EXPECT_EQ(ErrorOf("log_level: info\n---\nlog_level: debug\n"),
            "test.yaml:3:1: only one YAML document is allowed, but another one starts here");
}

TEST(ConfigErrors, SectionMustBeMap) {
  EXPECT_EQ(ErrorOf("probes:\n  tcp_retransmit: true\n"),
            "test.yaml:2:19: probes.tcp_retransmit: must be a map, got true");
}

TEST(ConfigErrors, SectionGivenSequence) {
  EXPECT_EQ(ErrorOf("http:\n  - max_connections: 5\n"),
            "test.yaml:2:3: http: must be a map, got a sequence");
}

TEST(ConfigErrors, ListenAddressesMustBeSequence) {
  EXPECT_EQ(ErrorOf("http:\n  listen_addresses: 127.0.0.1:10136\n"),
            "test.yaml:2:21: http.listen_addresses: must be a sequence of host:port strings, got "
            "127.0.0.1:10136");
}

TEST(ConfigErrors, ListenAddressMustBeScalar) {
  EXPECT_EQ(ErrorOf("http:\n  listen_addresses:\n    - {host: 127.0.0.1}\n"),
            "test.yaml:3:7: http.listen_addresses[0]: must be a host:port string, got a map");
}

TEST(ConfigErrors, InvalidListenAddressGivesParserReason) {
  const std::string reason = ParseListenAddress("localhost:10136").error();
  EXPECT_EQ(ErrorOf("http:\n  listen_addresses: [\"127.0.0.1:1\", \"localhost:10136\"]\n"),
            "test.yaml:2:37: http.listen_addresses[1]: " + reason);
}

TEST(ConfigErrors, InvalidListenPort) {
  const std::string reason = ParseListenAddress("127.0.0.1:70000").error();
  EXPECT_EQ(ErrorOf("http:\n  listen_addresses:\n    - 127.0.0.1:70000\n"),
            "test.yaml:3:7: http.listen_addresses[0]: " + reason);
}

TEST(ConfigErrors, EmptyListenAddresses) {
  EXPECT_EQ(ErrorOf("http:\n  listen_addresses: []\n"),
            "test.yaml:2:21: http.listen_addresses: must list at least one address");
}

TEST(ConfigErrors, MissingListenAddresses) {
  EXPECT_EQ(ErrorOf("http:\n  listen_addresses:\n  max_connections: 5\n"),
            "test.yaml:2:3: http.listen_addresses: must be a sequence of host:port strings, got "
            "nothing");
}

TEST(ConfigErrors, DuplicateListenAddress) {
  EXPECT_EQ(ErrorOf("http:\n  listen_addresses:\n    - 127.0.0.1:9100\n    - \"[::1]:9100\"\n"
                    "    - 127.0.0.1:9100\n"),
            "test.yaml:5:7: http.listen_addresses[2]: duplicate listen address 127.0.0.1:9100 "
            "(also at index 0)");
}

TEST(ConfigErrors, BooleanExpected) {
  EXPECT_EQ(ErrorOf("probes:\n  tcp_retransmit:\n    enabled: yes\n"),
            "test.yaml:3:14: probes.tcp_retransmit.enabled: must be true or false, got yes");
}

TEST(ConfigErrors, QuotedBoolean) {
  EXPECT_EQ(ErrorOf("probes:\n  tcp_retransmit:\n    required: \"true\"\n"),
            "test.yaml:3:15: probes.tcp_retransmit.required: must be true or false, got \"true\" "
            "(a quoted string)");
}

TEST(ConfigErrors, BooleanGivenSequence) {
  EXPECT_EQ(ErrorOf("probes: {tcp_retransmit: {netns_label: [true]}}"),
            "test.yaml:1:40: probes.tcp_retransmit.netns_label: must be true or false, got a "
            "sequence");
}

TEST(ConfigErrors, MissingValueIsReportedAtTheKey) {
  EXPECT_EQ(ErrorOf("http:\n  max_connections:\n\nlog_level: info\n"),
            "test.yaml:2:3: http.max_connections: must be an integer from 1 to 4096, got nothing");
}

TEST(ConfigErrors, IntegerOutOfRangeExampleFromDocs) {
  EXPECT_EQ(ErrorOf("log_level: info\n"
                    "http:\n"
                    "  max_connections: 64\n"
                    "probes:\n"
                    "  tcp_retransmit:\n"
                    "    enabled: true\n"
                    "    max_flows: 0\n"),
            "test.yaml:7:16: probes.tcp_retransmit.max_flows: must be an integer from 16 to "
            "1048576, got 0");
}

TEST(ConfigErrors, IntegerAboveRange) {
  EXPECT_EQ(ErrorOf("http: {connection_timeout_seconds: 301}"),
            "test.yaml:1:36: http.connection_timeout_seconds: must be an integer from 1 to 300, "
            "got 301");
}

TEST(ConfigErrors, QuotedInteger) {
  EXPECT_EQ(ErrorOf("probes: {tcp_retransmit: {max_cgroups: \"4096\"}}"),
            "test.yaml:1:40: probes.tcp_retransmit.max_cgroups: must be an integer from 16 to "
            "1048576, got \"4096\" (a quoted string)");
}

TEST(ConfigErrors, IntegerGivenMap) {
  EXPECT_EQ(ErrorOf("http:\n  max_connections: {a: 1}\n"),
            "test.yaml:2:20: http.max_connections: must be an integer from 1 to 4096, got a map");
}

// Every spelling yaml-cpp's as<uint32_t>() would accept or wrap, and a few more.
class ConfigRejectsInteger : public ::testing::TestWithParam<const char*> {};

TEST_P(ConfigRejectsInteger, WithRangeAndValueInMessage) {
  const std::string value = GetParam();
  EXPECT_EQ(
      ErrorOf("http:\n  max_connections: " + value + "\n"),
      "test.yaml:2:20: http.max_connections: must be an integer from 1 to 4096, got " + value);
}

INSTANTIATE_TEST_SUITE_P(ConfigErrors, ConfigRejectsInteger,
                         ::testing::Values("-1", "+5", "1.5", "0x10", "0o10", "010", "00", "12abc",
                                           "1e3", "1_000", "0", "4097", "4294967297",
                                           "99999999999999999999999", ".inf", "null_"));

TEST(ConfigErrors, UnknownLogLevel) {
  EXPECT_EQ(ErrorOf("log_level: warning\n"),
            "test.yaml:1:12: log_level: must be one of trace, debug, info, warn, error, got "
            "warning");
}

TEST(ConfigErrors, UnknownHook) {
  EXPECT_EQ(ErrorOf("probes:\n  tcp_retransmit:\n    hook: kprobe\n"),
            "test.yaml:3:11: probes.tcp_retransmit.hook: must be one of auto, tp_btf, tracepoint, "
            "got kprobe");
}

TEST(ConfigErrors, UnknownFlowLabels) {
  EXPECT_EQ(ErrorOf("probes:\n  tcp_retransmit:\n    flow_labels: local\n"),
            "test.yaml:3:18: probes.tcp_retransmit.flow_labels: must be one of full, remote, none, "
            "got local");
}

TEST(ConfigErrors, EnumValuesAreCaseSensitive) {
  EXPECT_EQ(ErrorOf("log_level: INFO\n"),
            "test.yaml:1:12: log_level: must be one of trace, debug, info, warn, error, got INFO");
}

TEST(ConfigErrors, EnumGivenSequence) {
  EXPECT_EQ(ErrorOf("log_level: [info]\n"),
            "test.yaml:1:12: log_level: must be one of trace, debug, info, warn, error, got a "
            "sequence");
}

TEST(ConfigErrors, FirstErrorInDocumentOrderWins) {
  EXPECT_EQ(ErrorOf("http:\n  max_connections: 0\nlog_level: loud\n"),
            "test.yaml:2:20: http.max_connections: must be an integer from 1 to 4096, got 0");
}

TEST(ConfigErrors, MultiLineValueIsEscapedOntoOneLine) {
  const std::string message = ErrorOf("log_level: |\n  info\n  debug\n");
  EXPECT_EQ(message,
            "test.yaml:1:12: log_level: must be one of trace, debug, info, warn, error, got "
            "\"info\\ndebug\\n\"");
  EXPECT_THAT(message, Not(HasSubstr("\n")));
}

TEST(ConfigErrors, LongValueIsShortened) {
  const std::string message = ErrorOf("log_level: " + std::string(500, 'x') + "\n");
  EXPECT_THAT(message, HasSubstr("got " + std::string(60, 'x') + "..."));
  EXPECT_LT(message.size(), 200u);
}

TEST(ConfigErrors, ShortenedValueKeepsWholeUtf8Characters) {
  // 59 ASCII bytes, then two-byte characters: the cut at 60 bytes falls inside one.
  const std::string message =
      ErrorOf("log_level: " + std::string(59, 'x') + "\xc3\xa9\xc3\xa9\xc3\xa9\n");
  EXPECT_THAT(message, HasSubstr("got " + std::string(59, 'x') + "..."));
}

TEST(ConfigErrors, EmptySourceNameStillGivesAPrefix) {
  try {
    ParseConfig("log_level: loud\n", "");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_THAT(e.what(), StartsWith("<config>:1:12: log_level: "));
  }
}

// ---------------------------------------------------------------------------------------------
// Files

TEST(ConfigFile, LoadsFileAndRecordsItsPath) {
  const TempFile file("good.yaml", "log_level: debug\n");
  const Config config = LoadConfigFile(file.path());
  EXPECT_EQ(config.source, file.path());
  EXPECT_EQ(config.log_level, spdlog::level::debug);
}

TEST(ConfigFile, ErrorsNameTheFile) {
  const TempFile file("bad.yaml", "\nhttp:\n  max_connections: many\n");
  try {
    LoadConfigFile(file.path());
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), file.path() +
                                         ":3:20: http.max_connections: must be an integer from 1 "
                                         "to 4096, got many");
  }
}

TEST(ConfigFile, MissingFile) {
  try {
    LoadConfigFile("/nonexistent/kpulse.yaml");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "cannot read config file '/nonexistent/kpulse.yaml': No such file or directory");
  }
}

TEST(ConfigFile, DirectoryIsNotAFile) {
  try {
    LoadConfigFile("/");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), "cannot read config file '/': Is a directory");
  }
}

TEST(ConfigFile, OversizedFileIsRejected) {
  const TempFile file("huge.yaml", std::string(2 << 20, '#'));
  try {
    LoadConfigFile(file.path());
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "cannot read config file '" + file.path() + "': larger than 1048576 bytes");
  }
}

}  // namespace
}  // namespace kpulse

namespace kpulse {
namespace {

TEST(ConfigPrivileges, DefaultsDropAndKeepFileHandlesWithoutAUserSwitch) {
  const Config config = ParseConfig("", "test.yaml");
  EXPECT_TRUE(config.privileges.drop);
  EXPECT_TRUE(config.privileges.cgroup_file_handles);
  EXPECT_FALSE(config.privileges.reload_attach);
  EXPECT_EQ(config.privileges.user, "");
  EXPECT_EQ(ParseConfig("privileges:\n  user: \"\"\n", "test.yaml").privileges.user, "")
      << "an empty user (the shipped config's) keeps the uid";
}

TEST(ConfigPrivileges, ParsesEveryField) {
  const Config config = ParseConfig(
      "privileges:\n  drop: false\n  user: kpulse\n  cgroup_file_handles: false\n"
      "  reload_attach: true\n",
      "test.yaml");
  EXPECT_FALSE(config.privileges.drop);
  EXPECT_EQ(config.privileges.user, "kpulse");
  EXPECT_FALSE(config.privileges.cgroup_file_handles);
  EXPECT_TRUE(config.privileges.reload_attach);
}

TEST(ConfigPrivileges, ABadUserNameIsOneLineWithFileLineAndKey) {
  try {
    ParseConfig("privileges:\n  user: \"root; rm\"\n", "test.yaml");
    FAIL() << "accepted a bad user name";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "test.yaml:2:9: privileges.user: must be a user name ([a-z_][a-z0-9_-]*, at most 32 "
              "characters), got \"root; rm\"");
  }
}

}  // namespace
}  // namespace kpulse
