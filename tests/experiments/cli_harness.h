// Running the qsweep binary from a test, as a user does, in a temporary folder of its own.
#pragma once

#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

namespace qsweep::testing {

inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

struct CliRun {
  int code;  // exit status, -1 when killed by a signal
  std::string out, err;
};

// A test with a fresh temporary folder (dir_, named after the suite and the process, removed
// afterwards), and `qsweep ARGS` with its output captured there.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string suite = ::testing::UnitTest::GetInstance()->current_test_info()->test_suite_name();
    dir_ = std::filesystem::temp_directory_path() / ("qsweep_" + suite + "_" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // ARGS is shell text (quote what needs quoting).
  CliRun run(const std::string& args) { return run_with_env("", args); }
  // ENV: "NAME=value " assignments for the command, or "".
  CliRun run_with_env(const std::string& env, const std::string& args) {
    const std::string cmd = env + std::string(QSWEEP_BINARY) + " " + args + " >" + (dir_ / "out").string() + " 2>" +
                            (dir_ / "err").string();
    const int st = std::system(cmd.c_str());
    return CliRun{WIFEXITED(st) ? WEXITSTATUS(st) : -1, slurp(dir_ / "out"), slurp(dir_ / "err")};
  }

  std::filesystem::path dir_;
};

}  // namespace qsweep::testing
