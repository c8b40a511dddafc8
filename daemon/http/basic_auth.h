#pragma once

#include <map>
#include <string>
#include <string_view>

namespace kpulse {

/// HTTP basic auth users (web config `basic_auth_users`): user name -> bcrypt hash, checked with
/// libcrypt (libxcrypt's crypt_rn).
///
/// Every Check() runs exactly one bcrypt, also for a user that does not exist: an unknown name is
/// checked against a fixed fake hash whose cost is the highest cost among the configured hashes,
/// so the answer takes as long as for a real user (with one cost for all users, exactly as
/// long) and its timing does not tell which user names exist. Nothing is cached: a cache of
/// accepted passwords would keep them (or a cheap function of them) in memory. At cost 10 a check
/// takes about 60 ms of CPU here (docs/configuration.md, "Web config").
///
/// Thread safety: immutable after construction; Check() is safe from many threads at once (each
/// call has its own scratch space, wiped before it returns).
class BasicAuthUsers {
 public:
  BasicAuthUsers() = default;
  /// `users` as WebConfig holds them: hashes already validated as bcrypt (ParseWebConfig).
  explicit BasicAuthUsers(std::map<std::string, std::string> users);

  /// No users: authentication is off.
  bool empty() const { return users_.empty(); }

  /// Whether `user` exists and `password` matches its hash (compared in constant time).
  bool Check(std::string_view user, std::string_view password) const;

  /// The hash an unknown user is checked against (for tests).
  const std::string& fake_hash() const { return fake_hash_; }

 private:
  std::map<std::string, std::string, std::less<>> users_;
  std::string fake_hash_;
};

}  // namespace kpulse
