#include "http/basic_auth.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <string>

#include "test_pki.h"

namespace kpulse {
namespace {

using Clock = std::chrono::steady_clock;

TEST(BasicAuthUsers, AcceptsTheRightPasswordOnly) {
  const BasicAuthUsers users(
      {{"alice", test::BcryptHash("wonderland", 4)}, {"bob", test::BcryptHash("builder", 4)}});
  EXPECT_FALSE(users.empty());
  EXPECT_TRUE(users.Check("alice", "wonderland"));
  EXPECT_TRUE(users.Check("bob", "builder"));
  EXPECT_FALSE(users.Check("alice", "builder"));
  EXPECT_FALSE(users.Check("alice", "wonderlan"));
  EXPECT_FALSE(users.Check("alice", ""));
  EXPECT_FALSE(users.Check("carol", "wonderland"));
  EXPECT_FALSE(users.Check("", ""));
  EXPECT_FALSE(users.Check("Alice", "wonderland"));
}

TEST(BasicAuthUsers, ANulInThePasswordNeverMatches) {
  const BasicAuthUsers users({{"alice", test::BcryptHash("wonder", 4)}});
  EXPECT_FALSE(users.Check("alice", std::string("wonder\0land", 11)));
}

TEST(BasicAuthUsers, NoUsersIsEmpty) { EXPECT_TRUE(BasicAuthUsers().empty()); }

TEST(BasicAuthUsers, AcceptsEveryBcryptVariant) {
  std::string hash = test::BcryptHash("pw", 4);
  for (const char variant : {'a', 'b', 'y'}) {
    hash[2] = variant;
    EXPECT_TRUE(BasicAuthUsers({{"u", hash}}).Check("u", "pw")) << hash.substr(0, 4);
  }
}

TEST(BasicAuthUsers, FakeHashHasTheHighestConfiguredCost) {
  const BasicAuthUsers users({{"a", test::BcryptHash("x", 4)}, {"b", test::BcryptHash("y", 6)}});
  EXPECT_EQ(users.fake_hash().substr(0, 7), "$2b$06$");
  EXPECT_EQ(users.fake_hash().size(), 60u);
}

// The fastest of `runs` timings of `check`: noise only ever adds time, so the minimum is stable.
double FastestMs(const std::function<void()>& check, int runs = 3) {
  double fastest = 1e9;
  for (int i = 0; i < runs; ++i) {
    const auto start = Clock::now();
    check();
    fastest =
        std::min(fastest, std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  return fastest;
}

// Coarse on purpose: an unknown user must cost a full bcrypt, not the microseconds of a map
// lookup. The fastest of three runs is compared with half of a known user's fastest, so a loaded
// machine cannot make it fail; skipping the bcrypt for unknown users (1000x faster) would.
TEST(BasicAuthUsers, UnknownUsersCostAsMuchAsKnownOnes) {
  const BasicAuthUsers users({{"alice", test::BcryptHash("wonderland", 8)}});
  const double known_right = FastestMs([&] { EXPECT_TRUE(users.Check("alice", "wonderland")); });
  const double known_wrong = FastestMs([&] { EXPECT_FALSE(users.Check("alice", "nope")); });
  const double unknown = FastestMs([&] { EXPECT_FALSE(users.Check("mallory", "nope")); });
  std::printf("bcrypt cost 8: known/right %.1f ms, known/wrong %.1f ms, unknown %.1f ms\n",
              known_right, known_wrong, unknown);
  EXPECT_GT(known_right, 2.0) << "bcrypt at cost 8 takes milliseconds";
  EXPECT_GT(known_wrong, 0.5 * known_right);
  EXPECT_GT(unknown, 0.5 * known_right);
}

// With users of different costs, an unknown user costs as much as the most expensive one.
TEST(BasicAuthUsers, UnknownUsersCostTheHighestConfiguredCost) {
  const BasicAuthUsers users(
      {{"cheap", test::BcryptHash("pw", 4)}, {"dear", test::BcryptHash("pw", 9)}});
  const double dear = FastestMs([&] { users.Check("dear", "wrong"); });
  const double unknown = FastestMs([&] { users.Check("nobody", "wrong"); });
  EXPECT_GT(unknown, 0.5 * dear) << "dear " << dear << " ms, unknown " << unknown << " ms";
}

}  // namespace
}  // namespace kpulse
