#include "util/label_value.h"

#include <gtest/gtest.h>

#include <random>
#include <string>

namespace kpulse {
namespace {

const std::string R = "\xEF\xBF\xBD";  // U+FFFD

TEST(LabelValueTest, AsciiIsUnchanged) {
  EXPECT_EQ(SanitizeLabelValue("/system.slice/nginx.service"), "/system.slice/nginx.service");
}

TEST(LabelValueTest, EmptyStaysEmpty) { EXPECT_EQ(SanitizeLabelValue(""), ""); }

TEST(LabelValueTest, ValidMultiByteUtf8IsUnchanged) {
  // 2-, 3- and 4-byte sequences, including the extremes U+0080, U+FFFF and U+10FFFF.
  const std::string text =
      "h\xC3\xA9llo \xE2\x9C\x93 \xF0\x9F\x98\x80 \xC2\x80\xEF\xBF\xBF\xF4\x8F\xBF\xBF";
  EXPECT_EQ(SanitizeLabelValue(text), text);
}

TEST(LabelValueTest, QuotesBackslashesAndNewlinesAreLeftForTheSerializer) {
  const std::string text = "a\"b\\c\nd\te";
  EXPECT_EQ(SanitizeLabelValue(text), text);
}

TEST(LabelValueTest, InvalidByteBecomesReplacementCharacter) {
  EXPECT_EQ(SanitizeLabelValue(std::string("a\xFF") + "b"), "a" + R + "b");
}

TEST(LabelValueTest, StrayContinuationByteBecomesReplacementCharacter) {
  EXPECT_EQ(SanitizeLabelValue("x\x80y"), "x" + R + "y");
}

TEST(LabelValueTest, TruncatedSequenceAtEndBecomesOneReplacementCharacter) {
  EXPECT_EQ(SanitizeLabelValue("a\xF0\x9F\x98"), "a" + R);
}

TEST(LabelValueTest, TruncatedSequenceKeepsTheCharacterThatInterruptedIt) {
  EXPECT_EQ(SanitizeLabelValue("\xE2\x82z"), R + "z");
  EXPECT_EQ(SanitizeLabelValue("\xE2\xC3\xA9"), R + "\xC3\xA9");
}

TEST(LabelValueTest, OverlongEncodingsAreReplaced) {
  EXPECT_EQ(SanitizeLabelValue("\xC0\xAF"), R + R);                  // '/' in 2 bytes.
  EXPECT_EQ(SanitizeLabelValue("\xC0\x80"), R + R);                  // NUL in 2 bytes.
  EXPECT_EQ(SanitizeLabelValue("\xE0\x80\xAF"), R + R + R);          // '/' in 3 bytes.
  EXPECT_EQ(SanitizeLabelValue("\xF0\x80\x80\xAF"), R + R + R + R);  // '/' in 4 bytes.
}

TEST(LabelValueTest, EncodedSurrogatesAreReplaced) {
  EXPECT_EQ(SanitizeLabelValue("\xED\xA0\x80"), R + R + R);       // U+D800
  EXPECT_EQ(SanitizeLabelValue("\xED\xBF\xBF"), R + R + R);       // U+DFFF
  EXPECT_EQ(SanitizeLabelValue("\xED\x9F\xBF"), "\xED\x9F\xBF");  // U+D7FF is fine.
}

TEST(LabelValueTest, CodePointsAboveU10FFFFAreReplaced) {
  EXPECT_EQ(SanitizeLabelValue("\xF4\x90\x80\x80"), R + R + R + R);
}

TEST(LabelValueTest, OutputIsAlwaysValidUtf8) {
  // Sanitising is idempotent exactly when its output has nothing left to replace.
  std::mt19937 rng(20240501);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_int_distribution<int> length(0, 24);
  for (int i = 0; i < 20000; ++i) {
    std::string raw(static_cast<size_t>(length(rng)), '\0');
    for (char& c : raw) c = static_cast<char>(byte(rng));
    const std::string once = SanitizeLabelValue(raw);
    ASSERT_EQ(SanitizeLabelValue(once), once) << "input #" << i;
  }
}

TEST(LabelValueTest, CapCutsOnlyBetweenCodePoints) {
  EXPECT_EQ(SanitizeLabelValue("a\xC3\xA9", 2), "a");
  EXPECT_EQ(SanitizeLabelValue("a\xC3\xA9", 3), "a\xC3\xA9");
  EXPECT_EQ(SanitizeLabelValue("\xE2\x82\xAC", 2), "");
  EXPECT_EQ(SanitizeLabelValue("ab", 2), "ab");
}

TEST(LabelValueTest, CapCountsReplacementCharactersAsThreeBytes) {
  EXPECT_EQ(SanitizeLabelValue("\xFF\xFF", 5), R);
  EXPECT_EQ(SanitizeLabelValue("\xFF\xFF", 6), R + R);
}

TEST(LabelValueTest, DefaultCapIs1024Bytes) {
  EXPECT_EQ(SanitizeLabelValue(std::string(2000, 'x')), std::string(1024, 'x'));
}

}  // namespace
}  // namespace kpulse
