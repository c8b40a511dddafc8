#include "cgroup/cgroup_labels.h"

#include <gtest/gtest.h>

#include <cctype>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

#include "cgroup/cgroup_labeler.h"

// Expected label sets are designated initializers: a field left out is expected to be empty.
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace kpulse {

// Readable failures for whole-label-set comparisons (found by ADL, so in namespace kpulse).
static void PrintTo(const CgroupLabels& labels, std::ostream* os) {
  *os << "{cgroup=\"" << labels.cgroup << "\", unit=\"" << labels.unit << "\", container_id=\""
      << labels.container_id << "\", pod_uid=\"" << labels.pod_uid << "\", qos=\"" << labels.qos
      << "\"}";
}

namespace {

using namespace std::string_literals;

// Realistic identifiers: a 64-hex container id and a pod UID, in both spellings (cgroupfs paths
// keep the dashes, systemd slice names turn them into underscores).
constexpr char kId[] = "8f2e9f26c13c95d998b2334961c711783c617855a440a2cc5cb71b15d5c28cdb";
constexpr char kPodUid[] = "5c8e2b4a-1f3d-4e6a-9b7c-0d2e4f6a8b1c";
constexpr char kPodUidSystemd[] = "5c8e2b4a_1f3d_4e6a_9b7c_0d2e4f6a8b1c";

// Every test compares all five fields: the ones a designated initializer leaves out must be empty.
using Want = CgroupLabels;

TEST(LabelsFromPath, IdentifiersUsedByTheseTestsAreWellFormed) {
  ASSERT_EQ(std::string_view(kId).size(), 64u);
  ASSERT_EQ(std::string_view(kPodUid).size(), 36u);
}

TEST(LabelsFromPath, SystemdServiceHasItsUnitAndNothingElse) {
  const CgroupLabels labels = LabelsFromPath("/system.slice/nginx.service");
  EXPECT_EQ(labels.cgroup, "/system.slice/nginx.service");
  EXPECT_EQ(labels.unit, "nginx.service");
  EXPECT_EQ(labels.container_id, "");
  EXPECT_EQ(labels.pod_uid, "");
  EXPECT_EQ(labels.qos, "");
}

TEST(LabelsFromPath, UserSessionScopeHasTheScopeAsUnit) {
  const std::string path = "/user.slice/user-1000.slice/session-3.scope";
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path, .unit = "session-3.scope"}));
}

TEST(LabelsFromPath, RootHasOnlyItsPath) { EXPECT_EQ(LabelsFromPath("/"), (Want{.cgroup = "/"})); }

TEST(LabelsFromPath, DockerSystemdDriverScopeIsAContainer) {
  const std::string path = "/system.slice/docker-"s + kId + ".scope";
  EXPECT_EQ(LabelsFromPath(path),
            (Want{.cgroup = path, .unit = "docker-"s + kId + ".scope", .container_id = kId}));
}

TEST(LabelsFromPath, DockerCgroupfsDriverDirectoryIsAContainer) {
  const std::string path = "/docker/"s + kId;
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path, .container_id = kId}));
}

TEST(LabelsFromPath, ContainerdUnderKubernetesSystemdDriverBurstable) {
  const std::string scope = "cri-containerd-"s + kId + ".scope";
  const std::string path = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"s +
                           kPodUidSystemd + ".slice/" + scope;
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path,
                                        .unit = scope,
                                        .container_id = kId,
                                        .pod_uid = kPodUid,
                                        .qos = "burstable"}));
}

TEST(LabelsFromPath, ContainerdUnderKubernetesSystemdDriverBesteffort) {
  const std::string scope = "cri-containerd-"s + kId + ".scope";
  const std::string path = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod"s +
                           kPodUidSystemd + ".slice/" + scope;
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path,
                                        .unit = scope,
                                        .container_id = kId,
                                        .pod_uid = kPodUid,
                                        .qos = "besteffort"}));
}

TEST(LabelsFromPath, PodSliceDirectlyBelowKubepodsSliceIsGuaranteed) {
  const std::string scope = "cri-containerd-"s + kId + ".scope";
  const std::string path = "/kubepods.slice/kubepods-pod"s + kPodUidSystemd + ".slice/" + scope;
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path,
                                        .unit = scope,
                                        .container_id = kId,
                                        .pod_uid = kPodUid,
                                        .qos = "guaranteed"}));
}

TEST(LabelsFromPath, PodSliceItselfHasPodAndQosButNoContainer) {
  const std::string slice = "kubepods-burstable-pod"s + kPodUidSystemd + ".slice";
  const std::string path = "/kubepods.slice/kubepods-burstable.slice/" + slice;
  EXPECT_EQ(LabelsFromPath(path),
            (Want{.cgroup = path, .unit = slice, .pod_uid = kPodUid, .qos = "burstable"}));
}

TEST(LabelsFromPath, QosSliceAloneHasQosOnly) {
  const std::string path = "/kubepods.slice/kubepods-besteffort.slice";
  EXPECT_EQ(LabelsFromPath(path),
            (Want{.cgroup = path, .unit = "kubepods-besteffort.slice", .qos = "besteffort"}));
}

TEST(LabelsFromPath, KubepodsSliceAloneHasNoQos) {
  EXPECT_EQ(LabelsFromPath("/kubepods.slice"),
            (Want{.cgroup = "/kubepods.slice", .unit = "kubepods.slice"}));
}

TEST(LabelsFromPath, CrioScopeIsAContainer) {
  const std::string scope = "crio-"s + kId + ".scope";
  const std::string path = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"s +
                           kPodUidSystemd + ".slice/" + scope;
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path,
                                        .unit = scope,
                                        .container_id = kId,
                                        .pod_uid = kPodUid,
                                        .qos = "burstable"}));
}

TEST(LabelsFromPath, CrioConmonScopeIsNotAContainer) {
  const std::string scope = "crio-conmon-"s + kId + ".scope";
  const std::string path = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"s +
                           kPodUidSystemd + ".slice/" + scope;
  EXPECT_EQ(LabelsFromPath(path),
            (Want{.cgroup = path, .unit = scope, .pod_uid = kPodUid, .qos = "burstable"}));
}

TEST(LabelsFromPath, PodmanLibpodScopeIsAContainer) {
  const std::string scope = "libpod-"s + kId + ".scope";
  const std::string path = "/machine.slice/" + scope;
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path, .unit = scope, .container_id = kId}));
}

TEST(LabelsFromPath, PodmanConmonScopeIsNotAContainer) {
  const std::string scope = "libpod-conmon-"s + kId + ".scope";
  const std::string path = "/machine.slice/" + scope;
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path, .unit = scope}));
}

TEST(LabelsFromPath, CgroupfsDriverBurstableContainer) {
  const std::string path = "/kubepods/burstable/pod"s + kPodUid + "/" + kId;
  EXPECT_EQ(LabelsFromPath(path),
            (Want{.cgroup = path, .container_id = kId, .pod_uid = kPodUid, .qos = "burstable"}));
}

TEST(LabelsFromPath, CgroupfsDriverPodDirectlyBelowKubepodsIsGuaranteed) {
  const std::string path = "/kubepods/pod"s + kPodUid + "/" + kId;
  EXPECT_EQ(LabelsFromPath(path),
            (Want{.cgroup = path, .container_id = kId, .pod_uid = kPodUid, .qos = "guaranteed"}));
}

TEST(LabelsFromPath, CgroupfsDriverBesteffortPodItself) {
  const std::string path = "/kubepods/besteffort/pod"s + kPodUid;
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path, .pod_uid = kPodUid, .qos = "besteffort"}));
}

TEST(LabelsFromPath, PodUidOfTheWrongLengthIsNotAPod) {
  const std::string short_uid = "5c8e2b4a_1f3d_4e6a_9b7c_0d2e4f6a8b1";  // last group: 11 digits
  const std::string long_uid = kPodUidSystemd + "0"s;
  for (const std::string& uid : {short_uid, long_uid}) {
    const std::string slice = "kubepods-burstable-pod" + uid + ".slice";
    const std::string path = "/kubepods.slice/" + slice;
    EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path, .unit = slice}));
  }
}

TEST(LabelsFromPath, UppercasePodUidIsNotAPod) {
  const std::string slice = "kubepods-burstable-pod5C8E2B4A_1F3D_4E6A_9B7C_0D2E4F6A8B1C.slice";
  const std::string path = "/kubepods.slice/" + slice;
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path, .unit = slice}));
  const std::string cgroupfs = "/kubepods/pod5C8E2B4A-1F3D-4E6A-9B7C-0D2E4F6A8B1C";
  EXPECT_EQ(LabelsFromPath(cgroupfs), (Want{.cgroup = cgroupfs}));
}

TEST(LabelsFromPath, PodUidWithTheOtherDriversSeparatorIsNotAPod) {
  const std::string slice = "kubepods-pod"s + kPodUid + ".slice";  // dashes in a systemd slice
  const std::string path = "/kubepods.slice/" + slice;
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path, .unit = slice}));
  const std::string cgroupfs = "/kubepods/pod"s + kPodUidSystemd;  // underscores in cgroupfs
  EXPECT_EQ(LabelsFromPath(cgroupfs), (Want{.cgroup = cgroupfs}));
}

TEST(LabelsFromPath, NonHexPodSliceIsNotAPod) {
  const std::string path = "/kubepods.slice/kubepods-burstable-podxyz.slice";
  EXPECT_EQ(LabelsFromPath(path),
            (Want{.cgroup = path, .unit = "kubepods-burstable-podxyz.slice"}));
}

TEST(LabelsFromPath, ContainerIdOf63HexDigitsIsNotAContainer) {
  const std::string id63 = kId + 1;  // one digit short
  const std::string scope = "docker-" + id63 + ".scope";
  EXPECT_EQ(LabelsFromPath("/system.slice/" + scope),
            (Want{.cgroup = "/system.slice/" + scope, .unit = scope}));
  EXPECT_EQ(LabelsFromPath("/docker/" + id63), (Want{.cgroup = "/docker/" + id63}));
  const std::string cgroupfs = "/kubepods/pod"s + kPodUid + "/" + id63;
  EXPECT_EQ(LabelsFromPath(cgroupfs),
            (Want{.cgroup = cgroupfs, .pod_uid = kPodUid, .qos = "guaranteed"}));
}

TEST(LabelsFromPath, UppercaseContainerIdIsNotAContainer) {
  std::string upper = kId;
  for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::string scope = "cri-containerd-" + upper + ".scope";
  EXPECT_EQ(LabelsFromPath("/system.slice/" + scope),
            (Want{.cgroup = "/system.slice/" + scope, .unit = scope}));
  EXPECT_EQ(LabelsFromPath("/docker/" + upper), (Want{.cgroup = "/docker/" + upper}));
}

TEST(LabelsFromPath, PodDirectoryOutsideKubepodsIsNotAPod) {
  const std::string below_service = "/system.slice/pod"s + kPodUid;
  EXPECT_EQ(LabelsFromPath(below_service), (Want{.cgroup = below_service, .unit = "system.slice"}));
  const std::string at_root = "/pod"s + kPodUid + "/" + kId;
  EXPECT_EQ(LabelsFromPath(at_root), (Want{.cgroup = at_root}));
  const std::string odd_class = "/kubepods/gold/pod"s + kPodUid;
  EXPECT_EQ(LabelsFromPath(odd_class), (Want{.cgroup = odd_class}));
  const std::string not_kubepods = "/burstable/pod"s + kPodUid;
  EXPECT_EQ(LabelsFromPath(not_kubepods), (Want{.cgroup = not_kubepods}));
}

TEST(LabelsFromPath, ContainerBelowAMalformedPodDirectoryIsNotAContainer) {
  const std::string path = "/kubepods/burstable/podxyz/"s + kId;
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path, .qos = "burstable"}));
}

TEST(LabelsFromPath, BareUnitSuffixIsNotAUnit) {
  EXPECT_EQ(LabelsFromPath("/.service"), (Want{.cgroup = "/.service"}));
  EXPECT_EQ(LabelsFromPath("/.scope"), (Want{.cgroup = "/.scope"}));
  // The deepest real unit wins; the bare suffix does not count as one.
  EXPECT_EQ(LabelsFromPath("/system.slice/.service"),
            (Want{.cgroup = "/system.slice/.service", .unit = "system.slice"}));
}

TEST(LabelsFromPath, DelegatedSubtreeBelowAServiceKeepsTheServiceAsUnit) {
  const std::string path = "/system.slice/foo.service/worker";
  EXPECT_EQ(LabelsFromPath(path), (Want{.cgroup = path, .unit = "foo.service"}));
}

TEST(LabelsFromPath, InvalidUtf8IsSanitisedInCgroup) {
  const std::string replacement = "\xEF\xBF\xBD";  // U+FFFD
  const CgroupLabels labels = LabelsFromPath("/system.slice/bad\xFF/worker\xC0");
  EXPECT_EQ(labels, (Want{.cgroup = "/system.slice/bad" + replacement + "/worker" + replacement,
                          .unit = "system.slice"}));
}

TEST(LabelsFromPath, InvalidUtf8InAUnitIsSanitisedInUnitToo) {
  const std::string replacement = "\xEF\xBF\xBD";
  const CgroupLabels labels = LabelsFromPath(
      "/system.slice/b\xFF"
      "d.service");
  EXPECT_EQ(labels, (Want{.cgroup = "/system.slice/b" + replacement + "d.service",
                          .unit = "b" + replacement + "d.service"}));
}

TEST(SentinelLabels, HasOnlyTheSentinelAsCgroup) {
  EXPECT_EQ(SentinelLabels(kOtherCgroup), (Want{.cgroup = "<other>"}));
}

TEST(AncestorAtDepth, DepthZeroKeepsThePathWhole) {
  EXPECT_EQ(AncestorAtDepth("/a.slice/b.slice/c.service", 0), "/a.slice/b.slice/c.service");
}

TEST(AncestorAtDepth, DeeperPathIsCutToItsAncestor) {
  EXPECT_EQ(AncestorAtDepth("/a.slice/b.slice/c.service", 1), "/a.slice");
  EXPECT_EQ(AncestorAtDepth("/a.slice/b.slice/c.service", 2), "/a.slice/b.slice");
}

TEST(AncestorAtDepth, PathNotDeeperThanTheDepthIsUnchanged) {
  EXPECT_EQ(AncestorAtDepth("/a.slice/b.service", 2), "/a.slice/b.service");
  EXPECT_EQ(AncestorAtDepth("/a.slice/b.service", 5), "/a.slice/b.service");
}

TEST(AncestorAtDepth, RootStaysRoot) {
  EXPECT_EQ(AncestorAtDepth("/", 0), "/");
  EXPECT_EQ(AncestorAtDepth("/", 1), "/");
  EXPECT_EQ(AncestorAtDepth("/", 3), "/");
}

// The labels of cgroup `path` as CgroupLabeler gives them under `policy`.
CgroupLabels LabelsUnder(const CgroupLabelPolicy& policy, const std::string& path) {
  const CgroupLabeler labeler([path](uint64_t) -> std::optional<std::string> { return path; },
                              policy);
  return *labeler.LabelsOf(1);
}

TEST(CgroupFolder, DefaultPolicyKeepsEveryPath) {
  const CgroupFolder folder;
  EXPECT_EQ(folder.Fold("/system.slice/nginx.service"), "/system.slice/nginx.service");
  EXPECT_EQ(folder.Fold("/"), "/");
}

TEST(CgroupFolder, DepthFoldsBeforeLabelling) {
  const std::string path = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"s +
                           kPodUidSystemd + ".slice/cri-containerd-" + kId + ".scope";
  const std::string pod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod"s +
                          kPodUidSystemd + ".slice";
  EXPECT_EQ(CgroupFolder({.depth = 3}).Fold(path), pod);
  // The folded path is labelled: the pod's labels, not the container's.
  EXPECT_EQ(LabelsUnder({.depth = 3}, path),
            (Want{.cgroup = pod,
                  .unit = "kubepods-burstable-pod"s + kPodUidSystemd + ".slice",
                  .pod_uid = kPodUid,
                  .qos = "burstable"}));
  EXPECT_EQ(LabelsUnder({.depth = 2}, path),
            (Want{.cgroup = "/kubepods.slice/kubepods-burstable.slice",
                  .unit = "kubepods-burstable.slice",
                  .qos = "burstable"}));
}

TEST(CgroupFolder, AllowListGivesOnlyMatchesASeriesOfTheirOwn) {
  const CgroupFolder folder({.allow = {"/system\\.slice/.*", "/user\\.slice"}});
  EXPECT_EQ(folder.Fold("/system.slice/nginx.service"), "/system.slice/nginx.service");
  EXPECT_EQ(folder.Fold("/user.slice"), "/user.slice");
  EXPECT_EQ(folder.Fold("/user.slice/user-1000.slice"), kOtherCgroup);
  EXPECT_EQ(folder.Fold("/kubepods.slice"), kOtherCgroup);
}

TEST(CgroupFolder, DenyListFoldsMatchesIntoOther) {
  const CgroupFolder folder({.deny = {"/user\\.slice/.*"}});
  EXPECT_EQ(folder.Fold("/user.slice/user-1000.slice/session-3.scope"), kOtherCgroup);
  EXPECT_EQ(folder.Fold("/user.slice"), "/user.slice");
  EXPECT_EQ(folder.Fold("/system.slice/nginx.service"), "/system.slice/nginx.service");
}

TEST(CgroupFolder, AllowAndDenyTogetherNeedAnAllowMatchAndNoDenyMatch) {
  const CgroupFolder folder({.allow = {"/system\\.slice/.*"}, .deny = {".*/docker-.*\\.scope"}});
  EXPECT_EQ(folder.Fold("/system.slice/nginx.service"), "/system.slice/nginx.service");
  EXPECT_EQ(folder.Fold("/system.slice/docker-"s + kId + ".scope"), kOtherCgroup);  // denied
  EXPECT_EQ(folder.Fold("/user.slice/docker-"s + kId + ".scope"), kOtherCgroup);    // not allowed
  EXPECT_EQ(folder.Fold("/user.slice"), kOtherCgroup);                              // not allowed
}

TEST(CgroupFolder, RegexIsMatchedAgainstTheFoldedPath) {
  // Folded to "/system.slice", which the allow list names; the full path would not match it.
  const CgroupFolder allow({.depth = 1, .allow = {"/system\\.slice"}});
  EXPECT_EQ(allow.Fold("/system.slice/nginx.service"), "/system.slice");
  // Matches the full path, but not the folded one: the folded one is what counts.
  const CgroupFolder nginx({.depth = 1, .allow = {".*nginx.*"}});
  EXPECT_EQ(nginx.Fold("/system.slice/nginx.service"), kOtherCgroup);
  const CgroupFolder deny({.depth = 1, .deny = {".*nginx.*"}});
  EXPECT_EQ(deny.Fold("/system.slice/nginx.service"), "/system.slice");
}

TEST(CgroupFolder, RegexMustMatchTheWholePathNotASubstring) {
  const CgroupFolder allow({.allow = {"nginx"}});
  EXPECT_EQ(allow.Fold("/system.slice/nginx.service"), kOtherCgroup);
  const CgroupFolder deny({.deny = {"system\\.slice"}});
  EXPECT_EQ(deny.Fold("/system.slice/nginx.service"), "/system.slice/nginx.service");
}

TEST(CgroupFolder, FoldedAwayCgroupGetsTheOtherSentinelLabels) {
  const std::string path = "/system.slice/docker-"s + kId + ".scope";
  EXPECT_EQ(LabelsUnder({.deny = {".*docker.*"}}, path), (Want{.cgroup = "<other>"}));
}

TEST(CgroupFolder, InvalidRegexThrows) {
  EXPECT_THROW(CgroupFolder folder({.allow = {"(unclosed"}}), std::regex_error);
}

}  // namespace
}  // namespace kpulse
