#pragma once
// Small helpers shared by the benchmarks.

#include <sched.h>

#include <algorithm>
#include <vector>

namespace kpulse::bench {

inline void PinToCpu(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  sched_setaffinity(0, sizeof(set), &set);
}

inline double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values[values.size() / 2];
}

}  // namespace kpulse::bench
