// Errors a user can fix (bad config, missing file, unsupported model): one clear sentence,
// reported by the CLI without a stack trace, exit code 2. Everything else is a bug.
#pragma once

#include <cstdio>
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace qsweep {

class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& what) : std::runtime_error(what) {}
};

// The message with control characters (a NUL or newline inside a node or file name) written
// as \xNN, so that it stays one line and is not cut short where it is printed as a C string.
inline std::string printable(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", static_cast<unsigned char>(c));
    else out += c;
  }
  return out;
}

template <typename... Args>
[[noreturn]] void user_error(fmt::format_string<Args...> f, Args&&... args) {
  throw UserError(printable(fmt::format(f, std::forward<Args>(args)...)));
}

// fmt::print(stderr, ...) that never throws: a stderr that cannot be written (a full disk, a
// closed descriptor, a reader gone) loses the message, not the run or the error being
// reported (fmt::print throws, and a throw from the CLI's error handler aborts).
template <typename... Args>
void eprint(fmt::format_string<Args...> f, Args&&... args) noexcept {
  try {
    const std::string s = fmt::format(f, std::forward<Args>(args)...);
    std::fwrite(s.data(), 1, s.size(), stderr);
  } catch (...) {
  }
}

}  // namespace qsweep
