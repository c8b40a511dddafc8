#include "cgroup/cgroup_labels.h"

#include <gtest/gtest.h>

namespace kpulse {
namespace {

TEST(LabelsFromPath, SystemdServiceHasItsUnitAndNothingElse) {
  const CgroupLabels labels = LabelsFromPath("/system.slice/nginx.service");
  EXPECT_EQ(labels.cgroup, "/system.slice/nginx.service");
  EXPECT_EQ(labels.unit, "nginx.service");
  EXPECT_EQ(labels.container_id, "");
  EXPECT_EQ(labels.pod_uid, "");
  EXPECT_EQ(labels.qos, "");
}

}  // namespace
}  // namespace kpulse
