#include "config/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdio>
#include <functional>
#include <initializer_list>
#include <optional>
#include <regex>
#include <system_error>
#include <utility>

#include "config/yaml_text.h"

namespace kpulse {

namespace {

constexpr std::string_view kDefaultListenAddress = "127.0.0.1:10136";
// A config file is a few hundred bytes; the cap only stops a mistaken path (/dev/zero, a log file)
// from being read forever.
constexpr size_t kMaxConfigFileBytes = 1 << 20;
// Values quoted in messages are cut to this length, so one bad value cannot flood a log line.
constexpr size_t kMaxQuotedValue = 60;

constexpr std::string_view kIntTag = "tag:yaml.org,2002:int";
constexpr std::string_view kBoolTag = "tag:yaml.org,2002:bool";

// The YAML spelling of each enum value, in the order messages list them. One table serves both
// parsing and ToString().
template <typename E>
struct EnumName {
  std::string_view name;
  E value;
};

constexpr std::array<EnumName<RetransHook>, 3> kRetransHookNames{{
    {"auto", RetransHook::kAuto},
    {"tp_btf", RetransHook::kTpBtf},
    {"tracepoint", RetransHook::kTracepoint},
}};

constexpr std::array<EnumName<SchedHook>, 3> kSchedHookNames{{
    {"auto", SchedHook::kAuto},
    {"sched_info", SchedHook::kSchedInfo},
    {"wakeup", SchedHook::kWakeup},
}};

constexpr std::array<EnumName<FlowLabels>, 3> kFlowLabelsNames{{
    {"full", FlowLabels::kFull},
    {"remote", FlowLabels::kRemote},
    {"none", FlowLabels::kNone},
}};

constexpr std::array<EnumName<spdlog::level::level_enum>, 5> kLogLevelNames{{
    {"trace", spdlog::level::trace},
    {"debug", spdlog::level::debug},
    {"info", spdlog::level::info},
    {"warn", spdlog::level::warn},
    {"error", spdlog::level::err},
}};

template <typename E, size_t N>
std::string_view NameOf(const std::array<EnumName<E>, N>& names, E value) {
  for (const auto& entry : names) {
    if (entry.value == value) return entry.name;
  }
  return "unknown";
}

// Makes `text` safe to put in a one-line message: control characters (newlines above all) are
// escaped and the result is cut at `max_length` characters.
std::string OneLine(std::string_view text, size_t max_length) {
  std::string out;
  for (const char c : text) {
    if (out.size() >= max_length) {
      // Do not leave half of a UTF-8 sequence behind.
      while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xc0) == 0x80)
        out.pop_back();
      if (!out.empty() && static_cast<unsigned char>(out.back()) >= 0xc0) out.pop_back();
      out += "...";
      break;
    }
    const auto byte = static_cast<unsigned char>(c);
    if (c == '\n') {
      out += "\\n";
    } else if (c == '\r') {
      out += "\\r";
    } else if (c == '\t') {
      out += "\\t";
    } else if (byte < 0x20 || byte == 0x7f) {
      char escaped[8];
      std::snprintf(escaped, sizeof(escaped), "\\x%02x", byte);
      out += escaped;
    } else {
      out += c;
    }
  }
  return out;
}

// A plain scalar is one written without quotes or block indicators; only those can be numbers or
// booleans. yaml-cpp tags quoted and block scalars "!", plain ones "?".
bool IsQuoted(const YAML::Node& node) { return node.IsScalar() && node.Tag() == "!"; }

// How a value appears in "got ..." clauses: its text for scalars, its kind otherwise.
std::string Describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a sequence";
    case YAML::NodeType::Scalar:
      if (IsQuoted(node)) return "\"" + OneLine(node.Scalar(), kMaxQuotedValue) + "\"";
      return OneLine(node.Scalar(), kMaxQuotedValue);
    case YAML::NodeType::Null:
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// Describe() for values that must be numbers or booleans, where quoting is the usual mistake.
std::string DescribeTyped(const YAML::Node& node) {
  std::string text = Describe(node);
  if (IsQuoted(node)) text += " (a quoted string)";
  return text;
}

// A value being parsed, with the dotted key path and the position errors about it point to.
struct Value {
  const YAML::Node& node;
  std::string path;
  YAML::Mark mark;
};

// One known key of a map and what to do with its value.
struct Field {
  std::string_view key;
  std::function<void(const Value&)> parse;
};

class Parser {
 public:
  explicit Parser(const std::string& source)
      : source_(source.empty() ? "<config>" : OneLine(source, 16 * kMaxQuotedValue)) {}

  [[noreturn]] void Fail(const YAML::Mark& mark, std::string_view path,
                         std::string_view reason) const {
    std::string message = source_;
    if (!mark.is_null()) {
      message += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
    }
    message += ": ";
    if (!path.empty()) {
      message += path;
      message += ": ";
    }
    message += reason;
    throw ConfigError(message);
  }

  [[noreturn]] void Fail(const Value& value, std::string_view reason) const {
    Fail(value.mark, value.path, reason);
  }

  Config ParseDocument(const YAML::Node& root) const {
    Config config = DefaultConfig();
    if (root.IsNull()) return config;  // Empty or comment-only file.
    if (!root.IsMap()) {
      Fail(root.Mark(), "", "the top level must be a map of settings, got " + Describe(root));
    }
    const Value top{root, "", root.Mark()};
    ParseMap(
        top,
        {
            {"log_level", [&](const Value& v) { config.log_level = ParseEnum(v, kLogLevelNames); }},
            {"http", [&](const Value& v) { ParseHttp(v, config.http); }},
            {"probes", [&](const Value& v) { ParseProbes(v, config); }},
            {"bpf_stats", [&](const Value& v) { config.bpf_stats = ParseBool(v); }},
            {"cgroups", [&](const Value& v) { ParseCgroups(v, config.cgroups); }},
            {"series", [&](const Value& v) { ParseSeries(v, config.series); }},
            {"privileges", [&](const Value& v) { ParsePrivileges(v, config.privileges); }},
        });
    return config;
  }

 private:
  // Walks a map in document order, so the first problem in the file is the one reported. A null
  // value (a section with every child commented out) leaves the defaults in place.
  void ParseMap(const Value& map, std::initializer_list<Field> fields) const {
    if (map.node.IsNull()) return;
    if (!map.node.IsMap()) Fail(map, "must be a map, got " + Describe(map.node));
    std::vector<std::pair<std::string, int>> seen;  // Key, 0-based line of its first use.
    for (const auto& entry : map.node) {
      const YAML::Node& key = entry.first;
      const YAML::Mark key_mark = key.Mark().is_null() ? map.mark : key.Mark();
      if (!key.IsScalar()) Fail(key_mark, map.path, "keys must be strings, got " + Describe(key));
      const std::string& name = key.Scalar();
      const std::string path = map.path.empty() ? OneLine(name, kMaxQuotedValue)
                                                : map.path + "." + OneLine(name, kMaxQuotedValue);
      const auto previous =
          std::find_if(seen.begin(), seen.end(), [&](const auto& s) { return s.first == name; });
      if (previous != seen.end()) {
        Fail(key_mark, path,
             "duplicate key (first set on line " + std::to_string(previous->second + 1) + ")");
      }
      seen.emplace_back(name, key_mark.line);
      const auto field =
          std::find_if(fields.begin(), fields.end(), [&](const Field& f) { return f.key == name; });
      if (field == fields.end()) {
        std::string known;
        for (const Field& f : fields) {
          if (!known.empty()) known += ", ";
          known += f.key;
        }
        Fail(key_mark, path, "unknown key (known: " + known + ")");
      }
      // yaml-cpp marks an empty value at the token after it, often on the next line: point at the
      // key instead.
      const YAML::Node& node = entry.second;
      const bool has_own_mark = !node.IsNull() && !node.Mark().is_null();
      field->parse(Value{node, path, has_own_mark ? node.Mark() : key_mark});
    }
  }

  void ParseCgroups(const Value& v, CgroupsConfig& cgroups) const {
    ParseMap(v,
             {
                 {"depth", [&](const Value& c) { cgroups.depth = ParseUint(c, 0, 64); }},
                 {"allow", [&](const Value& c) { cgroups.allow = ParseRegexes(c); }},
                 {"deny", [&](const Value& c) { cgroups.deny = ParseRegexes(c); }},
                 {"sweep_interval_seconds",
                  [&](const Value& c) { cgroups.sweep_interval_seconds = ParseUint(c, 1, 3600); }},
             });
  }

  void ParsePrivileges(const Value& v, PrivilegesConfig& privileges) const {
    ParseMap(
        v, {
               {"drop", [&](const Value& c) { privileges.drop = ParseBool(c); }},
               {"user", [&](const Value& c) { privileges.user = ParseUserName(c); }},
               {"cgroup_file_handles",
                [&](const Value& c) { privileges.cgroup_file_handles = ParseBool(c); }},
               {"reload_attach", [&](const Value& c) { privileges.reload_attach = ParseBool(c); }},
           });
  }

  // A user name as useradd accepts it (Debian's NAME_REGEX, without the trailing $), or "" for
  // "keep the uid".
  std::string ParseUserName(const Value& v) const {
    static const std::regex kUserName("([a-z_][a-z0-9_-]{0,31})?");
    if (!v.node.IsScalar() || !std::regex_match(v.node.Scalar(), kUserName)) {
      Fail(v, "must be a user name ([a-z_][a-z0-9_-]*, at most 32 characters), got " +
                  Describe(v.node));
    }
    return v.node.Scalar();
  }

  void ParseSeries(const Value& v, SeriesConfig& series) const {
    ParseMap(
        v, {
               {"max_series_per_family",
                [&](const Value& c) { series.max_series_per_family = ParseUint(c, 16, 10000000); }},
               {"idle_ttl_seconds",
                [&](const Value& c) { series.idle_ttl_seconds = ParseUint(c, 0, 31536000); }},
           });
  }

  // A sequence of ECMAScript regexes, each compiled here so that a bad one is a config error.
  std::vector<std::string> ParseRegexes(const Value& v) const {
    if (!v.node.IsSequence()) Fail(v, "must be a sequence of regexes, got " + Describe(v.node));
    std::vector<std::string> result;
    size_t i = 0;
    for (const YAML::Node& item : v.node) {
      const Value entry{item, v.path + "[" + std::to_string(i++) + "]",
                        item.IsNull() || item.Mark().is_null() ? v.mark : item.Mark()};
      if (!item.IsScalar()) Fail(entry, "must be a regex string, got " + Describe(item));
      try {
        std::regex(item.Scalar(), std::regex::ECMAScript);
      } catch (const std::regex_error& e) {
        Fail(entry, "invalid regex " + Describe(item) + ": " + OneLine(e.what(), kMaxQuotedValue));
      }
      result.push_back(item.Scalar());
    }
    return result;
  }

  void ParseHttp(const Value& v, HttpConfig& http) const {
    ParseMap(v,
             {
                 {"listen_addresses",
                  [&](const Value& c) { http.listen_addresses = ParseListenAddresses(c); }},
                 {"connection_timeout_seconds",
                  [&](const Value& c) { http.connection_timeout_seconds = ParseUint(c, 1, 300); }},
                 {"max_connections",
                  [&](const Value& c) { http.max_connections = ParseUint(c, 1, 4096); }},
             });
  }

  void ParseProbes(const Value& v, Config& config) const {
    std::optional<Value> offcpu_hook;  // where probes.offcpu.hook was set, for the check below
    ParseMap(
        v, {
               {"tcp_retransmit", [&](const Value& c) { ParseRetrans(c, config.tcp_retransmit); }},
               {"runqueue_latency",
                [&](const Value& c) { ParseRunqueue(c, config.runqueue_latency); }},
               {"offcpu", [&](const Value& c) { ParseOffcpu(c, config.offcpu, offcpu_hook); }},
           });
    // One sched_switch program serves both scheduler probes, so they run one hook.
    const RunqueueConfig& runq = config.runqueue_latency;
    const OffcpuConfig& offcpu = config.offcpu;
    if (offcpu_hook && runq.enabled && offcpu.enabled && runq.hook != SchedHook::kAuto &&
        offcpu.hook != SchedHook::kAuto && runq.hook != offcpu.hook) {
      Fail(*offcpu_hook, "must equal probes.runqueue_latency.hook (" +
                             std::string(ToString(runq.hook)) +
                             ") or be auto: both probes share one sched_switch program");
    }
  }

  void ParseOffcpu(const Value& v, OffcpuConfig& offcpu, std::optional<Value>& hook_value) const {
    ParseMap(v, {
                    {"enabled", [&](const Value& c) { offcpu.enabled = ParseBool(c); }},
                    {"required", [&](const Value& c) { offcpu.required = ParseBool(c); }},
                    {"hook",
                     [&](const Value& c) {
                       offcpu.hook = ParseEnum(c, kSchedHookNames);
                       hook_value.emplace(c);
                     }},
                    {"min_block_us",
                     [&](const Value& c) { offcpu.min_block_us = ParseUint(c, 0, 60000000); }},
                    {"max_cgroups",
                     [&](const Value& c) { offcpu.max_cgroups = ParseUint(c, 16, 1048576); }},
                    {"max_tasks",
                     [&](const Value& c) { offcpu.max_tasks = ParseUint(c, 1024, 4194304); }},
                    {"stacks", [&](const Value& c) { ParseOffcpuStacks(c, offcpu.stacks); }},
                });
  }

  void ParseOffcpuStacks(const Value& v, OffcpuStacksConfig& stacks) const {
    ParseMap(v, {
                    {"enabled", [&](const Value& c) { stacks.enabled = ParseBool(c); }},
                    {"user", [&](const Value& c) { stacks.user = ParseBool(c); }},
                    {"min_block_us",
                     [&](const Value& c) { stacks.min_block_us = ParseUint(c, 0, 60000000); }},
                    {"max_stacks",
                     [&](const Value& c) { stacks.max_stacks = ParseUint(c, 16, 1048576); }},
                    {"max_entries",
                     [&](const Value& c) { stacks.max_entries = ParseUint(c, 16, 1048576); }},
                });
  }

  void ParseRunqueue(const Value& v, RunqueueConfig& runq) const {
    ParseMap(
        v,
        {
            {"enabled", [&](const Value& c) { runq.enabled = ParseBool(c); }},
            {"required", [&](const Value& c) { runq.required = ParseBool(c); }},
            {"hook", [&](const Value& c) { runq.hook = ParseEnum(c, kSchedHookNames); }},
            {"max_cgroups", [&](const Value& c) { runq.max_cgroups = ParseUint(c, 16, 1048576); }},
            {"max_tasks", [&](const Value& c) { runq.max_tasks = ParseUint(c, 1024, 4194304); }},
            {"per_cpu", [&](const Value& c) { runq.per_cpu = ParseBool(c); }},
        });
  }

  void ParseRetrans(const Value& v, RetransConfig& retrans) const {
    constexpr uint32_t kMinEntries = 16;
    constexpr uint32_t kMaxEntries = 1048576;
    ParseMap(
        v,
        {
            {"enabled", [&](const Value& c) { retrans.enabled = ParseBool(c); }},
            {"required", [&](const Value& c) { retrans.required = ParseBool(c); }},
            {"hook", [&](const Value& c) { retrans.hook = ParseEnum(c, kRetransHookNames); }},
            {"max_flows",
             [&](const Value& c) { retrans.max_flows = ParseUint(c, kMinEntries, kMaxEntries); }},
            {"max_cgroups",
             [&](const Value& c) { retrans.max_cgroups = ParseUint(c, kMinEntries, kMaxEntries); }},
            {"flow_labels",
             [&](const Value& c) { retrans.flow_labels = ParseEnum(c, kFlowLabelsNames); }},
            {"fold_ephemeral_ports",
             [&](const Value& c) { retrans.fold_ephemeral_ports = ParseBool(c); }},
            {"netns_label", [&](const Value& c) { retrans.netns_label = ParseBool(c); }},
        });
  }

  // Digits only, no sign, no leading zero: yaml-cpp's as<uint32_t>() would take "-1", "0x10",
  // "010" (octal in YAML 1.1, decimal in 1.2) and more.
  uint32_t ParseUint(const Value& v, uint32_t min, uint32_t max) const {
    const std::string expected =
        "must be an integer from " + std::to_string(min) + " to " + std::to_string(max);
    if (!v.node.IsScalar() || !(v.node.Tag() == "?" || v.node.Tag() == kIntTag)) {
      Fail(v, expected + ", got " + DescribeTyped(v.node));
    }
    const std::string& text = v.node.Scalar();
    const bool digits_only = !text.empty() && std::all_of(text.begin(), text.end(), [](char c) {
      return c >= '0' && c <= '9';
    });
    uint64_t value = 0;
    bool ok = digits_only && !(text.size() > 1 && text[0] == '0');
    if (ok) {
      const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
      ok = ec == std::errc() && end == text.data() + text.size();
    }
    if (!ok || value < min || value > max) Fail(v, expected + ", got " + DescribeTyped(v.node));
    return static_cast<uint32_t>(value);
  }

  // YAML 1.2 core schema booleans only; "yes", "on", "y" are YAML 1.1 and read as strings there.
  bool ParseBool(const Value& v) const {
    if (v.node.IsScalar() && (v.node.Tag() == "?" || v.node.Tag() == kBoolTag)) {
      const std::string& text = v.node.Scalar();
      if (text == "true" || text == "True" || text == "TRUE") return true;
      if (text == "false" || text == "False" || text == "FALSE") return false;
    }
    Fail(v, "must be true or false, got " + DescribeTyped(v.node));
  }

  // Any scalar style is fine here: "auto" and auto are the same string.
  template <typename E, size_t N>
  E ParseEnum(const Value& v, const std::array<EnumName<E>, N>& names) const {
    if (v.node.IsScalar()) {
      for (const auto& entry : names) {
        if (v.node.Scalar() == entry.name) return entry.value;
      }
    }
    std::string allowed;
    for (const auto& entry : names) {
      if (!allowed.empty()) allowed += ", ";
      allowed += entry.name;
    }
    Fail(v, "must be one of " + allowed + ", got " + Describe(v.node));
  }

  std::vector<ListenAddress> ParseListenAddresses(const Value& v) const {
    if (!v.node.IsSequence()) {
      Fail(v, "must be a sequence of host:port strings, got " + Describe(v.node));
    }
    if (v.node.size() == 0) Fail(v, "must list at least one address");
    std::vector<ListenAddress> result;
    size_t i = 0;
    for (const YAML::Node& item : v.node) {
      const Value entry{item, v.path + "[" + std::to_string(i) + "]",
                        item.IsNull() || item.Mark().is_null() ? v.mark : item.Mark()};
      if (!item.IsScalar()) Fail(entry, "must be a host:port string, got " + Describe(item));
      auto address = ParseListenAddress(item.Scalar());
      if (!address) Fail(entry, OneLine(address.error(), 4 * kMaxQuotedValue));
      const auto first = std::find_if(result.begin(), result.end(), [&](const ListenAddress& a) {
        return a.text == address->text;
      });
      if (first != result.end()) {
        Fail(entry, "duplicate listen address " + Describe(item) + " (also at index " +
                        std::to_string(first - result.begin()) + ")");
      }
      result.push_back(std::move(*address));
      ++i;
    }
    return result;
  }

  std::string source_;
};

}  // namespace

Config DefaultConfig() {
  Config config;
  auto address = ParseListenAddress(kDefaultListenAddress);
  if (!address) throw std::logic_error("default listen address does not parse: " + address.error());
  config.http.listen_addresses.push_back(std::move(*address));
  return config;
}

Config ParseConfig(const std::string& yaml_text, const std::string& source_name) {
  const Parser parser(source_name);
  Config config;
  try {
    const auto fail = [&](const YAML::Mark& mark, const std::string& reason) {
      parser.Fail(mark, "", reason);
    };
    const auto quote = [](std::string_view token) { return OneLine(token, kMaxQuotedValue); };
    if (FirstYamlDocumentHasContent(yaml_text, fail, quote)) {
      config = parser.ParseDocument(YAML::Load(yaml_text));
    } else {
      config = DefaultConfig();  // Empty or comment-only file.
    }
  } catch (const YAML::ParserException& e) {
    parser.Fail(e.mark, "", "YAML syntax error: " + OneLine(e.msg, 4 * kMaxQuotedValue));
  } catch (const YAML::Exception& e) {
    // Not expected past the syntax check, but no yaml-cpp error may escape.
    parser.Fail(e.mark, "", "YAML error: " + OneLine(e.msg, 4 * kMaxQuotedValue));
  }
  config.source = source_name;
  return config;
}

Config LoadConfigFile(const std::string& path) {
  std::string text;
  if (const std::string error = ReadSmallFile(path, kMaxConfigFileBytes, text); !error.empty()) {
    throw ConfigError("cannot read config file '" + OneLine(path, 4 * kMaxQuotedValue) +
                      "': " + error);
  }
  return ParseConfig(text, path);
}

std::string_view ToString(RetransHook hook) { return NameOf(kRetransHookNames, hook); }

std::string_view ToString(SchedHook hook) { return NameOf(kSchedHookNames, hook); }

SchedHook EffectiveSchedHook(const Config& config) {
  const RunqueueConfig& runq = config.runqueue_latency;
  const OffcpuConfig& offcpu = config.offcpu;
  if (runq.enabled && runq.hook != SchedHook::kAuto) return runq.hook;
  if (offcpu.enabled && offcpu.hook != SchedHook::kAuto) return offcpu.hook;
  return SchedHook::kAuto;
}

std::string_view ToString(FlowLabels labels) { return NameOf(kFlowLabelsNames, labels); }

}  // namespace kpulse
