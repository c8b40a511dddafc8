// Scrape cost: fills the real BPF maps from user space (10k flows, 1k cgroups with run-queue and
// off-CPU histograms, about 100k series lines), then renders /metrics through the same
// collectors and endpoint the daemon uses, reporting the median render time, the page size and
// the process RSS. With `idle SECONDS`, it also runs the built daemon for SECONDS with a scrape
// every 15 s and reports the daemon's CPU use.
//
// usage: kpulse_scrape_bench [rounds=21] [idle SECONDS]   (root)
#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <prometheus/text_serializer.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "config/config.h"
#include "bpf/retrans_probe.h"
#include "bpf/sched_probe.h"
#include "collect/offcpu_collector.h"
#include "collect/retrans_collector.h"
#include "collect/runqueue_collector.h"
#include "http/metrics_handler.h"
#include "util/memory.h"

namespace {

constexpr int kFlows = 10000;
constexpr int kCgroups = 1000;

int MapFd(const bpf_object* object, const char* name) {
  const int fd = bpf_object__find_map_fd_by_name(object, name);
  if (fd < 0) {
    std::fprintf(stderr, "no map %s\n", name);
    std::exit(1);
  }
  return fd;
}

template <typename Key, typename Value>
void Put(int fd, const Key& key, const Value& value) {
  if (bpf_map_update_elem(fd, &key, &value, BPF_ANY) != 0) {
    std::fprintf(stderr, "map update failed: %s\n", strerror(errno));
    std::exit(1);
  }
}

sched_hist SomeHist(int seed) {
  sched_hist hist{};
  for (int slot = 0; slot < SCHED_HIST_SLOTS; ++slot) hist.slots[slot] = (seed + slot) % 7;
  hist.sum_ns = 1000000ULL * static_cast<uint64_t>(seed + 1);
  return hist;
}

long StatusKib(const char* field) {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind(field, 0) == 0) return std::atol(line.c_str() + std::strlen(field));
  }
  return -1;
}

// User + system CPU ticks of a process.
long CpuTicks(pid_t pid) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string stat((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  std::string rest = stat.substr(stat.rfind(')') + 2);
  std::vector<std::string> fields;
  size_t start = 0, end;
  while ((end = rest.find(' ', start)) != std::string::npos) {
    fields.push_back(rest.substr(start, end - start));
    start = end + 1;
  }
  return std::atol(fields[11].c_str()) + std::atol(fields[12].c_str());  // utime, stime
}

bool Scrape(uint16_t port) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  const char request[] = "GET /metrics HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n";
  ok = ok && write(fd, request, sizeof(request) - 1) > 0;
  char buffer[65536];
  while (ok && read(fd, buffer, sizeof(buffer)) > 0) {
  }
  close(fd);
  return ok;
}

int IdleCpu(const char* binary, int seconds) {
  const uint16_t port = 19000 + static_cast<uint16_t>(getpid() % 1000);
  const std::string config = "/tmp/kpulse-idle-bench.yaml";
  std::ofstream(config) << "log_level: warn\nhttp:\n  listen_addresses: [\"127.0.0.1:" << port
                        << "\"]\n";
  const pid_t daemon = fork();
  if (daemon == 0) {
    execl(binary, binary, "--config", config.c_str(), nullptr);
    _exit(127);
  }
  std::this_thread::sleep_for(std::chrono::seconds(2));  // start-up, not idle cost
  const long ticks_before = CpuTicks(daemon);
  const auto start = std::chrono::steady_clock::now();
  int scrapes = 0;
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(seconds)) {
    scrapes += Scrape(port) ? 1 : 0;
    std::this_thread::sleep_for(std::chrono::seconds(15));
  }
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const long ticks = CpuTicks(daemon) - ticks_before;
  kill(daemon, SIGTERM);
  waitpid(daemon, nullptr, 0);
  std::remove(config.c_str());
  const double cpu_seconds = static_cast<double>(ticks) / static_cast<double>(sysconf(_SC_CLK_TCK));
  std::printf("idle daemon: %d scrapes in %.0f s, CPU %.3f s = %.3f%% of one core\n", scrapes,
              elapsed, cpu_seconds, 100.0 * cpu_seconds / elapsed);
  return 0;
}

// User + system CPU time of this process so far, every thread.
double ProcessCpuSeconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) {
    return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6;
  };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

}  // namespace

int main(int argc, char** argv) {
  kpulse::ReturnLargeBuffersToTheSystem();  // as the daemon does
  if (geteuid() != 0) {
    std::fprintf(stderr, "kpulse_scrape_bench: needs root (loads BPF programs)\n");
    return 2;
  }
  const int rounds = argc > 1 ? std::atoi(argv[1]) : 21;
  libbpf_set_print([](libbpf_print_level, const char*, va_list) { return 0; });
  spdlog::set_level(spdlog::level::warn);

  kpulse::RetransConfig retrans_config;
  auto retrans = kpulse::RetransProbe::Start(retrans_config);
  kpulse::SchedProbeOptions sched_options;
  // Every slot per-CPU, as on hosts where the cgroups fit the per-CPU budget (this VM's default):
  // a scrape reads CPUs x the histograms.
  const int cpus = libbpf_num_possible_cpus();
  sched_options.hot_histogram_bytes =
      size_t{4096} * OFFCPU_STATE_MAX * sizeof(sched_hist) * static_cast<size_t>(cpus);
  auto sched = kpulse::SchedProbe::Start(sched_options);

  // Synthetic content: distinct upstreams, cgroups with every probe's series.
  const int flows = MapFd(retrans->object(), "retrans_flows");
  for (int i = 0; i < kFlows; ++i) {
    retrans_flow_key key{};
    key.family = 2;
    const uint32_t raddr = htonl(0x0a000000u + static_cast<uint32_t>(i));
    std::memcpy(key.raddr, &raddr, 4);
    key.rport = 443;
    key.kind = RETRANS_KIND_SYN;
    Put(flows, key, retrans_flow_value{static_cast<uint64_t>(i)});
  }
  const int retrans_cgroups = MapFd(retrans->object(), "retrans_cgroups");
  const int cgroup_slots = MapFd(sched->object(), "cgroup_slots");
  const int slot_owner = MapFd(sched->object(), "slot_owner");
  const int free_slots = MapFd(sched->object(), "free_slots");
  const int runq = MapFd(sched->object(), "runq_hot_hists");
  const int offcpu = MapFd(sched->object(), "offcpu_hot_hists");
  // A per-CPU value: the histogram on CPU 0, zeros elsewhere.
  auto per_cpu = [cpus](const sched_hist& hist) {
    std::vector<sched_hist> values(static_cast<size_t>(cpus));
    values[0] = hist;
    return values;
  };
  auto put_per_cpu = [](int fd, uint32_t index, const std::vector<sched_hist>& values) {
    if (bpf_map_update_elem(fd, &index, values.data(), BPF_ANY) != 0) {
      std::fprintf(stderr, "map update failed: %s\n", strerror(errno));
      std::exit(1);
    }
  };
  const uint64_t kFirstId = 1ULL << 40;  // ids no real cgroup has
  // Slots are claimed as the program claims them: popped from free_slots, then owned.
  auto claim_slot = [&](uint64_t id) {
    uint32_t slot = 0;
    if (bpf_map_lookup_and_delete_elem(free_slots, nullptr, &slot) != 0) {
      std::fprintf(stderr, "no free slot: %s\n", strerror(errno));
      std::exit(1);
    }
    Put(slot_owner, slot, id);
    return slot;
  };
  for (int i = 0; i < kCgroups; ++i) {
    const uint64_t id = kFirstId + static_cast<uint64_t>(i);
    for (uint32_t kind = 0; kind < RETRANS_KIND_MAX; ++kind) {
      Put(retrans_cgroups, retrans_cgroup_key{id, kind, 0}, retrans_cgroup_value{7});
    }
    const uint32_t slot = claim_slot(id);
    Put(cgroup_slots, id, slot);
    put_per_cpu(runq, slot, per_cpu(SomeHist(i)));
    put_per_cpu(offcpu, sched_hist_index(slot, 0, OFFCPU_STATE_MAX, OFFCPU_SLEEP),
                per_cpu(SomeHist(i)));
    put_per_cpu(offcpu, sched_hist_index(slot, 0, OFFCPU_STATE_MAX, OFFCPU_DISK),
                per_cpu(SomeHist(i + 1)));
  }
  auto paths = std::make_shared<const kpulse::CgroupLabeler>(
      [kFirstId](uint64_t id) -> std::optional<std::string> {
        return "/bench.slice/service-" + std::to_string(id - kFirstId) + ".service";
      });
  // Every series exported: no cap, no idle TTL.
  const kpulse::SeriesPolicy all{size_t{1} << 30, std::chrono::seconds(0)};

  kpulse::MetricsEndpoint endpoint;
  endpoint.Add(std::make_shared<kpulse::RetransCollector>(*retrans, paths, retrans_config, all));
  endpoint.Add(std::make_shared<kpulse::RunqueueCollector>(*sched, paths, sched_options.runqueue, all));
  endpoint.Add(std::make_shared<kpulse::OffcpuCollector>(*sched, paths, all));

  {  // Where the time goes: collecting (map reads, labels) vs serialising.
    std::vector<std::shared_ptr<prometheus::Collectable>> parts = {
        std::make_shared<kpulse::RetransCollector>(*retrans, paths, retrans_config, all),
        std::make_shared<kpulse::RunqueueCollector>(*sched, paths, sched_options.runqueue, all),
        std::make_shared<kpulse::OffcpuCollector>(*sched, paths, all)};
    std::vector<prometheus::MetricFamily> families;
    double collect_ms = 0;
    std::string each;
    for (const auto& part : parts) {
      const auto start = std::chrono::steady_clock::now();
      auto collected = part->Collect();
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count();
      collect_ms += ms;
      each += (each.empty() ? "" : " + ") + std::to_string(static_cast<int>(ms + 0.5));
      for (auto& family : collected) families.push_back(std::move(family));
    }
    auto serialize_ms = [&families](size_t workers) {
      auto copy = families;
      const auto begin = std::chrono::steady_clock::now();
      const std::string text = kpulse::SerializeText(std::move(copy), 12 << 20, workers);
      return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - begin)
          .count();
    };
    std::printf(
        "one scrape split: collect %.1f ms (%s, retransmits + run queue + off-CPU, each on its "
        "own thread), serialise %.1f ms (one thread), %.1f ms (%zu threads)\n",
        collect_ms, each.c_str(), serialize_ms(1), serialize_ms(kpulse::RenderWorkers()),
        kpulse::RenderWorkers());
  }

  std::vector<double> millis;
  size_t bytes = 0, lines = 0;
  const double cpu_before = ProcessCpuSeconds();
  for (int i = 0; i < rounds; ++i) {
    const auto start = std::chrono::steady_clock::now();
    const kpulse::HttpResponse page = endpoint.Render(kpulse::HttpRequest{});
    millis.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
            .count());
    bytes = page.body.size();
    lines = static_cast<size_t>(std::count(page.body.begin(), page.body.end(), '\n'));
  }
  const double cpu_ms = (ProcessCpuSeconds() - cpu_before) * 1e3 / rounds;
  std::sort(millis.begin(), millis.end());
  std::printf(
      "scrape: %zu lines, %.1f MiB, render median %.1f ms (min %.1f, max %.1f) over %d, "
      "CPU %.1f ms per render (all threads)\n",
      lines, static_cast<double>(bytes) / (1 << 20), millis[millis.size() / 2], millis.front(),
      millis.back(), rounds, cpu_ms);
  std::printf("process RSS %.1f MiB (peak %.1f MiB)\n",
              static_cast<double>(StatusKib("VmRSS:")) / 1024.0,
              static_cast<double>(StatusKib("VmHWM:")) / 1024.0);

  if (argc > 3 && std::string(argv[2]) == "idle") {
    retrans.reset();
    sched.reset();
    return IdleCpu(KPULSE_BINARY, std::atoi(argv[3]));
  }
  return 0;
}
