// Errors: every failure the user can cause (bad file, bad config, bad shape) throws frugal::Error
// with a message that names the file/key and the problem. main() prints it as one line and exits 1.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <utility>

namespace frugal {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

template <class... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace frugal

// FRUGAL_CHECK(cond, "fmt {}", args...): throw frugal::Error with the message when cond is false.
#define FRUGAL_CHECK(cond, ...)   \
  do {                            \
    if (!(cond)) {                \
      ::frugal::fail(__VA_ARGS__); \
    }                             \
  } while (0)
