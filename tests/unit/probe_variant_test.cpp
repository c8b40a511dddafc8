// The probes' hook choice is a pure function of the kernel's features (bpf/kernel_features.h):
// every combination is checked here, whatever kernel runs the tests.
#include <gtest/gtest.h>

#include "bpf/retrans_probe.h"
#include "bpf/sched_probe.h"

namespace kpulse {
namespace {

TEST(ChooseRetransVariant, AutoTakesTpBtfWithErrWhereTheTracepointReportsErrors) {
  EXPECT_EQ(ChooseRetransVariant(RetransHook::kAuto, {true, true}).value(),
            RetransVariant::kTpBtfWithErr);
  EXPECT_EQ(ChooseRetransVariant(RetransHook::kAuto, {true, false}).value(),
            RetransVariant::kTpBtf);
}

TEST(ChooseRetransVariant, AutoFallsBackToTheClassicTracepointWithoutBtfTypes) {
  EXPECT_EQ(ChooseRetransVariant(RetransHook::kAuto, {false, false}).value(),
            RetransVariant::kTracepoint);
}

TEST(ChooseRetransVariant, ForcedTracepointIgnoresBtf) {
  EXPECT_EQ(ChooseRetransVariant(RetransHook::kTracepoint, {true, true}).value(),
            RetransVariant::kTracepoint);
}

TEST(ChooseRetransVariant, ForcedTpBtfWithoutBtfTypesIsAnErrorNotAFallback) {
  const auto chosen = ChooseRetransVariant(RetransHook::kTpBtf, {false, false});
  ASSERT_FALSE(chosen.has_value());
  EXPECT_NE(chosen.error().find("tp_btf"), std::string::npos) << chosen.error();
}

TEST(ChooseSchedVariant, AutoNeedsAllThreeFeaturesForSchedInfo) {
  EXPECT_EQ(ChooseSchedVariant(SchedHook::kAuto, {true, true, true}).value(),
            SchedVariant::kSchedInfo);
  for (const SchedKernelFeatures missing_one : {SchedKernelFeatures{false, true, true},
                                                SchedKernelFeatures{true, false, true},
                                                SchedKernelFeatures{true, true, false}}) {
    EXPECT_EQ(ChooseSchedVariant(SchedHook::kAuto, missing_one).value(), SchedVariant::kWakeup);
  }
}

TEST(ChooseSchedVariant, ForcedWakeupIgnoresFeatures) {
  EXPECT_EQ(ChooseSchedVariant(SchedHook::kWakeup, {true, true, true}).value(),
            SchedVariant::kWakeup);
}

TEST(ChooseSchedVariant, ForcedSchedInfoNamesEveryMissingFeature) {
  const auto chosen = ChooseSchedVariant(SchedHook::kSchedInfo, {false, false, true});
  ASSERT_FALSE(chosen.has_value());
  EXPECT_EQ(chosen.error(),
            "hook sched_info requested, but the kernel lacks sched_info accounting "
            "(CONFIG_SCHED_INFO); task storage maps (5.11+)");
}

TEST(ProbeError, KeepsTheErrnoAndSaysItInOneLine) {
  const ProbeError error("tcp_retransmit", BpfFailure{"attaching the retrans BPF programs", EPERM});
  EXPECT_EQ(error.code().value(), EPERM);
  EXPECT_STREQ(error.what(),
               "tcp_retransmit: attaching the retrans BPF programs failed: Operation not permitted");
  EXPECT_EQ(ProbeError("x", BpfFailure{"no hook"}).code().value(), 0);
}

}  // namespace
}  // namespace kpulse
