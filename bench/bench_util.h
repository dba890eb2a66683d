// Small helpers the benchmark programs share.
#pragma once

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <optional>

#include "experiments/layerwise.h"

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

// A seeded sample of k cells of a grid, spread over the layers, as bench/torch_grid.py's
// --cells argument ("LAYER:BITS,...").
inline std::string sample_cells(const GridResult& grid, size_t k) {
  std::mt19937 rng(42);
  std::vector<size_t> all(grid.cells.size());
  for (size_t c = 0; c < all.size(); ++c) all[c] = c;
  std::shuffle(all.begin(), all.end(), rng);
  all.resize(std::min(k, all.size()));
  std::string spec;
  for (size_t c : all) spec += fmt::format("{}{}:{}", spec.empty() ? "" : ",", grid.cells[c].layer, grid.cells[c].weight_bits);
  return spec;
}

// Runs the PyTorch peer (bench/torch_grid.py, command `cmd`) and returns the JSON object it
// prints last; prints why and returns nothing when it did not run.
inline std::optional<nlohmann::json> run_torch_peer(const std::string& cmd) {
  int status = 0;
  const std::string out = run_capture(cmd, &status);
  const auto brace = out.rfind("\n{");
  if (status != 0 || brace == std::string::npos) {
    fmt::print("pytorch  : peer did not run (status {}): {}\n", status, out.substr(0, 3000));
    return std::nullopt;
  }
  return nlohmann::json::parse(out.substr(brace + 1));
}

}  // namespace qsweep::bench
