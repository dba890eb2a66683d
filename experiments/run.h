// `qsweep run`: config in, results folder out.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "experiments/config.h"
#include "experiments/layerwise.h"
#include "experiments/stats.h"

namespace qsweep {

struct RunOptions {
  std::string config_path;
  std::vector<std::string> overrides;  // --set a.b=VALUE
  std::string out_root;                // --out (overrides output.root)
  bool naive = false;                  // --naive
  bool quiet = false;                  // --quiet
  std::string backend;                 // --backend (overrides run.backend)
  std::string command_line;
};

struct RunOutcome {
  std::filesystem::path folder;
  Config config;
  GridResult grid;
  std::vector<std::string> layer_names;
};

RunOutcome run_experiment(const RunOptions& options);

// Text of layerwise.csv for a grid (with bootstrap intervals of each cell's degradation).
std::string layerwise_csv(const Graph& g, const GridResult& r, const std::vector<QuantSpec>& specs,
                          const PairedBootstrap& boot);

}  // namespace qsweep
