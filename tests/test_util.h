// Small helpers shared by the tests: a temporary directory removed at scope exit, and reading a
// whole file.
#pragma once

#include <stdlib.h>
#include <zstd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "core/error.h"

namespace frugal::testing {

class TempDir {
 public:
  explicit TempDir(const std::string& label = "test") {
    std::string pattern =
        (std::filesystem::temp_directory_path() / ("frugal_" + label + "_XXXXXX")).string();
    FRUGAL_CHECK(mkdtemp(pattern.data()) != nullptr, "mkdtemp {} failed", pattern);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  // The directory itself, or a path inside it.
  std::string path(const std::string& name = "") const {
    return name.empty() ? path_.string() : (path_ / name).string();
  }
  std::string file(const std::string& name) const { return path(name); }
  std::string sub(const std::string& name) const { return path(name); }

 private:
  std::filesystem::path path_;
};

inline std::string read_bytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The message of the frugal::Error that f throws ("" when it throws none).
template <class F>
std::string error_message(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// One zstd frame holding `text`.
inline std::string zstd_compress(const std::string& text, int level = 3) {
  std::string out(ZSTD_compressBound(text.size()), '\0');
  const size_t n = ZSTD_compress(out.data(), out.size(), text.data(), text.size(), level);
  FRUGAL_CHECK(!ZSTD_isError(n), "zstd: {}", ZSTD_getErrorName(n));
  out.resize(n);
  return out;
}

}  // namespace frugal::testing
