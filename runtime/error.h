// Errors a user can fix (bad config, missing file, unsupported model): one clear sentence,
// reported by the CLI without a stack trace, exit code 2. Everything else is a bug.
#pragma once

#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace qsweep {

class UserError : public std::runtime_error {
 public:
  explicit UserError(const std::string& what) : std::runtime_error(what) {}
};

template <typename... Args>
[[noreturn]] void user_error(fmt::format_string<Args...> f, Args&&... args) {
  throw UserError(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace qsweep
