#pragma once

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace kpulse {

/// The ceiling on what Prometheus receives from one family (YAML `series`).
struct SeriesPolicy {
  size_t max_series = 5000;            // series per family; the rest folds into one <other> series
  std::chrono::seconds idle_ttl{600};  // a series whose value has not changed for this long is
                                       // left out of /metrics (0: never)
};

/// What becomes of one identity (a cgroup label set, a flow) at a scrape.
enum class SeriesFate {
  kVisible,  // exported as its own series
  kHidden,   // unchanged for longer than the idle TTL: left out until it changes again
  kFolded,   // past the cap: summed into <other>, and stays there (a counter must not move
             // between series) until the identity disappears
};

/// Decides, scrape after scrape, which identities of a family are exported: identities already
/// visible keep their place, new ones (and hidden ones that change again) are admitted while the
/// family stays within `max_series`, the rest fold. Remembers only identities present at the last
/// update, so memory is bounded by what the kernel maps hold. Not thread-safe: the owning
/// collector serialises updates.
template <typename Key, typename Less = std::less<Key>>
class SeriesLimiter {
 public:
  struct Input {
    Key key;
    uint64_t signature;  // changes whenever the identity's value changes
    size_t series;       // series the identity takes in the family (kinds, states, CPUs)
  };
  struct Departed {
    Key key;
    bool folded;
  };

  SeriesLimiter(std::string family, SeriesPolicy policy)
      : family_(std::move(family)), policy_(policy) {}

  /// A reload's new cap and idle TTL, applied by the next Update (series over a lower cap fold
  /// into <other> then; the state of known series is kept).
  void SetPolicy(SeriesPolicy policy) { policy_ = policy; }

  /// Fates of `inputs` (same order, keys unique) at `now`; `reserved` series of the family are
  /// always there (the <other> series itself). Identities of the previous update missing from
  /// `inputs` are forgotten and listed by departed(). State is updated in place: no per-update
  /// rebuild of the map (a 10k-flow family is updated every scrape).
  std::vector<SeriesFate> Update(const std::vector<Input>& inputs, size_t reserved,
                                 std::chrono::steady_clock::time_point now) {
    std::vector<SeriesFate> fates(inputs.size(), SeriesFate::kFolded);
    std::vector<State*> states(inputs.size());
    const size_t budget = policy_.max_series > reserved ? policy_.max_series - reserved : 0;
    size_t visible = 0;
    ++epoch_;
    std::vector<size_t> candidates;  // new, or hidden and changed: admitted after the incumbents
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Input& in = inputs[i];
      auto [it, inserted] =
          state_.try_emplace(in.key, State{in.signature, now, SeriesFate::kVisible, epoch_});
      State& state = *(states[i] = &it->second);
      state.epoch = epoch_;
      if (inserted) {
        candidates.push_back(i);
        continue;
      }
      if (state.signature != in.signature) state.last_change = now;
      state.signature = in.signature;
      if (state.fate == SeriesFate::kFolded) {
        fates[i] = SeriesFate::kFolded;
      } else if (Idle(state, now)) {
        state.fate = fates[i] = SeriesFate::kHidden;
      } else if (state.fate == SeriesFate::kVisible && visible + in.series <= budget) {
        visible += in.series;
        fates[i] = SeriesFate::kVisible;
      } else {
        candidates.push_back(i);
      }
    }
    for (size_t i : candidates) {
      State& state = *states[i];
      if (visible + inputs[i].series <= budget) {
        visible += inputs[i].series;
        state.fate = fates[i] = SeriesFate::kVisible;
      } else {
        state.fate = fates[i] = SeriesFate::kFolded;
        ++folded_total_;
        if (!warned_) {
          spdlog::warn(
              "{}: more than {} series (series.max_series_per_family); further cgroups or flows "
              "fold into <other> (kpulse_series_folded_total counts them)",
              family_, policy_.max_series);
          warned_ = true;
        }
      }
    }
    departed_.clear();
    for (auto it = state_.begin(); it != state_.end();) {
      if (it->second.epoch == epoch_) {
        ++it;
        continue;
      }
      departed_.push_back({it->first, it->second.fate == SeriesFate::kFolded});
      it = state_.erase(it);
    }
    return fates;
  }

  /// Identities that disappeared at the last Update().
  const std::vector<Departed>& departed() const { return departed_; }
  /// Identities folded into <other> since start (each counted once per folding).
  uint64_t folded_total() const { return folded_total_; }
  const std::string& family() const { return family_; }

 private:
  struct State {
    uint64_t signature;
    std::chrono::steady_clock::time_point last_change;
    SeriesFate fate;
    uint64_t epoch;  // the last update that saw it
  };

  bool Idle(const State& state, std::chrono::steady_clock::time_point now) const {
    return policy_.idle_ttl.count() > 0 && now - state.last_change > policy_.idle_ttl;
  }

  std::string family_;
  SeriesPolicy policy_;
  std::map<Key, State, Less> state_;
  std::vector<Departed> departed_;
  uint64_t epoch_ = 0;
  uint64_t folded_total_ = 0;
  bool warned_ = false;
};

}  // namespace kpulse
