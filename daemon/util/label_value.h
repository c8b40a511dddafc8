#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace kpulse {

/// The one sanitiser every external string (cgroup path, comm, ...) passes through before it
/// becomes a Prometheus label value.
///
/// - Ill-formed UTF-8 becomes U+FFFD, one per maximal ill-formed subpart (Unicode 15, 3.9
///   "U+FFFD Substitution of Maximal Subparts"): stray continuation bytes, 0xC0/0xC1/0xF5..0xFF,
///   truncated sequences, overlong encodings and UTF-16 surrogates (U+D800..U+DFFF). One label
///   value with invalid UTF-8 makes Prometheus mark the whole target down.
/// - The result is at most `max_bytes` long and is cut only between code points, so the cap never
///   produces a partial sequence. Replacement characters (3 bytes each) count against the cap.
/// - Nothing else changes: quotes, backslashes, newlines and other control characters are valid
///   UTF-8 and are the exposition serializer's business to escape.
///
/// Pure function; safe to call from any thread.
std::string SanitizeLabelValue(std::string_view raw, size_t max_bytes = 1024);

}  // namespace kpulse
