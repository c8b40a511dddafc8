#include "http/listen_address.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>

namespace kpulse {
namespace {

TEST(ListenAddress, ParsesIpv4) {
  auto a = ParseListenAddress("127.0.0.1:10136");
  ASSERT_TRUE(a) << a.error();
  EXPECT_EQ(a->family(), AF_INET);
  const auto* sin = reinterpret_cast<const sockaddr_in*>(&a->storage);
  EXPECT_EQ(ntohs(sin->sin_port), 10136);
  EXPECT_EQ(ntohl(sin->sin_addr.s_addr), 0x7f000001u);
  EXPECT_FALSE(a->dual_stack);
}

TEST(ListenAddress, ParsesBracketedIpv6) {
  auto a = ParseListenAddress("[::1]:9000");
  ASSERT_TRUE(a) << a.error();
  EXPECT_EQ(a->family(), AF_INET6);
  const auto* sin6 = reinterpret_cast<const sockaddr_in6*>(&a->storage);
  EXPECT_EQ(ntohs(sin6->sin6_port), 9000);
  EXPECT_TRUE(IN6_IS_ADDR_LOOPBACK(&sin6->sin6_addr));
}

TEST(ListenAddress, EmptyHostMeansDualStackAny) {
  auto a = ParseListenAddress(":10136");
  ASSERT_TRUE(a) << a.error();
  EXPECT_EQ(a->family(), AF_INET6);
  EXPECT_TRUE(a->dual_stack);
}

TEST(ListenAddress, RejectsMissingPort) {
  auto a = ParseListenAddress("127.0.0.1");
  ASSERT_FALSE(a);
  EXPECT_NE(a.error().find("host:port"), std::string::npos);
}

TEST(ListenAddress, RejectsPortOutOfRange) {
  EXPECT_FALSE(ParseListenAddress("127.0.0.1:65536"));
  EXPECT_FALSE(ParseListenAddress("127.0.0.1:-1"));
  EXPECT_FALSE(ParseListenAddress("127.0.0.1:80x"));
}

TEST(ListenAddress, RejectsHostNamesAndUnbracketedIpv6) {
  EXPECT_FALSE(ParseListenAddress("localhost:80"));
  EXPECT_FALSE(ParseListenAddress("::1:80"));
  EXPECT_FALSE(ParseListenAddress("[::1:80"));
}

}  // namespace
}  // namespace kpulse
