// Small helpers the benchmark programs share.
#pragma once

#include <algorithm>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

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

}  // namespace qsweep::bench
