// `qsweep run`: config in, results folder out.
#pragma once

#include <atomic>
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
  std::string shard;                   // --shard I/N
  std::string run_id;                  // --run-id
  bool fresh = false;                  // --fresh: a new run id, nothing reused
  bool fresh_id = false;               // run_id was made by --fresh: resuming needs --run-id
  std::string command_line;
};

struct RunOutcome {
  bool interrupted = false;  // stopped by SIGTERM/SIGINT; rerun to resume
  std::filesystem::path folder;
  Config config;
  GridResult grid;
};

RunOutcome run_experiment(const RunOptions& options);

// `qsweep merge RUN_DIR`: checks that every shard is present and from the same config,
// model and dataset, and writes the merged results folder.
RunOutcome merge_run(const std::string& dir, bool quiet);

// Set by SIGTERM/SIGINT: runs finish their batches in flight, keep what is recorded, and stop.
std::atomic<bool>& stop_requested();

// (RunInterrupted, experiments/layerwise.h: the CLI exits 143 on it.)

// Text of layerwise.csv for a grid (with bootstrap intervals of each cell's degradation).
std::string layerwise_csv(const Graph& g, const GridResult& r, const std::vector<QuantSpec>& specs,
                          const PairedBootstrap& boot);

}  // namespace qsweep
