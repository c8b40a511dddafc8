#include "config/yaml_text.h"

#include <fcntl.h>
#include <unistd.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/parser.h>

#include <cerrno>
#include <sstream>
#include <system_error>

#include "util/unique_fd.h"

namespace kpulse {

namespace {

// Records where each document starts and what its root is, without building nodes.
class DocumentScanner final : public YAML::EventHandler {
 public:
  struct Document {
    YAML::Mark start;
    YAML::Mark root;
    bool empty = true;
  };

  const Document& last() const { return last_; }

  void OnDocumentStart(const YAML::Mark& mark) override {
    last_ = Document{mark, mark, true};
    at_root_ = true;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark& mark, YAML::anchor_t) override { Root(mark, true); }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t) override { Root(mark, false); }
  void OnScalar(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                const std::string&) override {
    Root(mark, false);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {
    Root(mark, false);
  }
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {
    Root(mark, false);
  }
  void OnMapEnd() override {}

 private:
  void Root(const YAML::Mark& mark, bool empty) {
    if (!at_root_) return;
    last_.root = mark;
    last_.empty = empty;
    at_root_ = false;
  }

  Document last_;
  bool at_root_ = false;
};

}  // namespace

std::string ReadSmallFile(const std::string& path, size_t max_bytes, std::string& text) {
  const UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return std::generic_category().message(errno);
  char buffer[16384];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof(buffer));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return std::generic_category().message(errno);
    if (n == 0) return "";
    text.append(buffer, static_cast<size_t>(n));
    if (text.size() > max_bytes) return "larger than " + std::to_string(max_bytes) + " bytes";
  }
}

bool FirstYamlDocumentHasContent(const std::string& text, const YamlStructureError& fail,
                                 const std::function<std::string(std::string_view)>& quote) {
  std::istringstream stream(text);
  YAML::Parser yaml(stream);
  DocumentScanner scanner;
  bool first_has_content = false;
  size_t count = 0;
  YAML::Mark previous_start;
  while (yaml.HandleNextDocument(scanner)) {
    const DocumentScanner::Document& document = scanner.last();
    if (count > 0 && document.start.pos == previous_start.pos) {
      const auto pos = static_cast<size_t>(document.root.pos);
      const std::string token =
          pos < text.size() ? "'" + quote(std::string_view(text).substr(pos, 1)) + "'" : "input";
      fail(document.root, "YAML syntax error: unexpected " + token);
    }
    if (count == 0) {
      first_has_content = !document.empty;
    } else if (!document.empty) {
      fail(document.root, "only one YAML document is allowed, but another one starts here");
    }
    previous_start = document.start;
    ++count;
  }
  return first_has_content;
}

}  // namespace kpulse
