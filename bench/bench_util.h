// Small helpers the benchmark programs share.
#pragma once

#include <cstdio>
#include <string>

namespace qsweep::bench {

// Runs a shell command and returns what it wrote to stdout; *status gets pclose's status.
inline std::string run_capture(const std::string& cmd, int* status) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) {
    *status = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  *status = pclose(p);
  return out;
}

}  // namespace qsweep::bench
