// Helpers for the tests that run the frugal binary (FRUGAL_BINARY) in a directory and check its
// exit code, standard output and standard error.
#pragma once

#include <sys/wait.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "test_util.h"

namespace frugal::testing {

struct Result {
  int code = -1;
  std::string out, err;
};

// Runs `frugal ARGS` in `dir` on one thread (the test machine is shared).
inline Result run_frugal(const std::filesystem::path& dir, const std::string& args) {
  const std::string command = fmt::format(
      "cd '{}' && OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 '{}' {} >stdout.txt 2>stderr.txt",
      dir.string(), FRUGAL_BINARY, args);
  const int status = std::system(command.c_str());
  Result r;
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  r.out = read_bytes(dir / "stdout.txt");
  r.err = read_bytes(dir / "stderr.txt");
  return r;
}

inline void write_bytes(const std::filesystem::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

inline std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// Every file under `dir` -> its bytes.
inline std::map<std::string, std::string> snapshot(const std::filesystem::path& dir) {
  std::map<std::string, std::string> files;
  for (auto& entry : std::filesystem::recursive_directory_iterator(dir))
    if (entry.is_regular_file())
      files[std::filesystem::relative(entry.path(), dir).string()] = read_bytes(entry.path());
  return files;
}

}  // namespace frugal::testing
