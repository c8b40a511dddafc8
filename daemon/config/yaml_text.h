#pragma once

// What the config and web-config loaders share: reading a small file whole, and checking the
// document structure of YAML text before yaml-cpp builds nodes from it.

#include <yaml-cpp/mark.h>

#include <cstddef>
#include <functional>
#include <string>
#include <string_view>

namespace kpulse {

/// Reads `path` into `text`; returns "" on success, else the reason (strerror text, or "larger
/// than N bytes" past `max_bytes`, so that a mistaken path such as /dev/zero is not read forever).
std::string ReadSmallFile(const std::string& path, size_t max_bytes, std::string& text);

/// Called with the position and the reason of a structural error; must not return (throws).
using YamlStructureError = std::function<void(const YAML::Mark& mark, const std::string& reason)>;

/// Whether the first YAML document of `text` has content. Only one document may have content: a
/// trailing "---" is harmless, but settings after one would be ignored silently. Replaces
/// YAML::LoadAll(), which in yaml-cpp 0.7 never returns on some invalid input (a stray ',' where
/// a document starts, jbeder/yaml-cpp#1040, fixed upstream after 0.8): the parser reports an
/// empty document without consuming the token, again and again. Here a document that starts where
/// the previous one started is a syntax error, naming the token at `quote(token)`.
/// yaml-cpp's own exceptions pass through.
bool FirstYamlDocumentHasContent(const std::string& text, const YamlStructureError& fail,
                                 const std::function<std::string(std::string_view)>& quote);

}  // namespace kpulse
