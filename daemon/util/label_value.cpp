#include "util/label_value.h"

#include <cstdint>

namespace kpulse {
namespace {

constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD in UTF-8.

// One step of decoding: `length` bytes starting at the current position form either one
// well-formed code point (`valid`) or one maximal ill-formed subpart to be replaced by U+FFFD.
struct Step {
  size_t length;
  bool valid;
};

// Follows Unicode Table 3-7 (well-formed UTF-8 byte sequences). The first continuation byte's range
// depends on the lead byte; that is what rules out overlong forms (E0 80..9F, F0 80..8F),
// surrogates (ED A0..BF) and code points above U+10FFFF (F4 90..BF).
Step NextStep(std::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t lead = byte(i);
  if (lead < 0x80) return {1, true};

  size_t continuation = 0;  // Bytes expected after the lead.
  uint8_t low = 0x80;       // Allowed range of the first continuation byte.
  uint8_t high = 0xBF;
  if (lead >= 0xC2 && lead <= 0xDF) {
    continuation = 1;
  } else if (lead == 0xE0) {
    continuation = 2;
    low = 0xA0;
  } else if ((lead >= 0xE1 && lead <= 0xEC) || lead == 0xEE || lead == 0xEF) {
    continuation = 2;
  } else if (lead == 0xED) {
    continuation = 2;
    high = 0x9F;
  } else if (lead == 0xF0) {
    continuation = 3;
    low = 0x90;
  } else if (lead >= 0xF1 && lead <= 0xF3) {
    continuation = 3;
  } else if (lead == 0xF4) {
    continuation = 3;
    high = 0x8F;
  } else {
    return {1, false};  // 0x80..0xC1 (continuation or overlong lead), 0xF5..0xFF.
  }

  size_t length = 1;
  for (size_t k = 0; k < continuation; ++k, ++length) {
    if (i + length >= s.size()) return {length, false};  // Truncated at the end of the input.
    const uint8_t b = byte(i + length);
    const uint8_t lo = k == 0 ? low : 0x80;
    const uint8_t hi = k == 0 ? high : 0xBF;
    if (b < lo || b > hi) return {length, false};  // The maximal subpart ends before `b`.
  }
  return {length, true};
}

}  // namespace

std::string SanitizeLabelValue(std::string_view raw, size_t max_bytes) {
  std::string out;
  out.reserve(raw.size() < max_bytes ? raw.size() : max_bytes);
  size_t i = 0;
  while (i < raw.size()) {
    const Step step = NextStep(raw, i);
    const std::string_view piece = step.valid ? raw.substr(i, step.length) : kReplacement;
    if (out.size() + piece.size() > max_bytes) break;  // Cut between code points only.
    out.append(piece);
    i += step.length;
  }
  return out;
}

}  // namespace kpulse
