#include "http/basic_auth.h"

#include <crypt.h>
#include <string.h>

#include <algorithm>
#include <memory>

namespace kpulse {

namespace {

// A bcrypt hash of a random password that was thrown away. Only its salt and checksum are used;
// the cost field ("10" here) is replaced by the configured users' highest cost.
constexpr std::string_view kFakeHash =
    "$2b$10$1vEyusu2Z2OS8k3Nccr82.R5bOdOXP3r/9NhoDayUclg/9VUcwVC2";
constexpr size_t kCostOffset = 4;  // "$2b$" then two cost digits

// Equality without an early exit, so the time does not depend on where two hashes differ.
bool ConstantTimeEquals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char difference = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    difference |= static_cast<unsigned char>(a[i] ^ b[i]);
  }
  return difference == 0;
}

// crypt_rn's scratch space (about 32 KiB), zeroed before use and wiped after: it holds state
// derived from the password.
struct CryptScratch {
  CryptScratch() : data(std::make_unique<crypt_data>()) {}
  ~CryptScratch() { explicit_bzero(data.get(), sizeof(crypt_data)); }
  std::unique_ptr<crypt_data> data;
};

// Whether bcrypt of `password` with the salt and cost of `hash` gives `hash`.
bool BcryptMatches(std::string_view password, const std::string& hash) {
  // crypt_rn takes a C string: a password with a NUL byte in it could only match a shorter one.
  if (password.find('\0') != std::string_view::npos) return false;
  const std::string phrase(password);
  CryptScratch scratch;
  const char* result = crypt_rn(phrase.c_str(), hash.c_str(), scratch.data.get(),
                                static_cast<int>(sizeof(crypt_data)));
  return result != nullptr && ConstantTimeEquals(result, hash);
}

}  // namespace

BasicAuthUsers::BasicAuthUsers(std::map<std::string, std::string> users)
    : users_(users.begin(), users.end()), fake_hash_(kFakeHash) {
  // Costs are two digits ("04".."31"), so the highest string is the highest cost.
  std::string cost;
  for (const auto& [name, hash] : users_) {
    if (hash.size() > kCostOffset + 2) cost = std::max(cost, hash.substr(kCostOffset, 2));
  }
  if (!cost.empty()) fake_hash_.replace(kCostOffset, 2, cost);
}

bool BasicAuthUsers::Check(std::string_view user, std::string_view password) const {
  const auto found = users_.find(user);
  if (found == users_.end()) {
    BcryptMatches(password, fake_hash_);  // Same work as for a real user; never a match.
    return false;
  }
  return BcryptMatches(password, found->second);
}

}  // namespace kpulse
