// `qsweep submit`: a grid as a SLURM job array plus a dependent merge job.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace qsweep {

struct SubmitOptions {
  std::string config_path;
  std::vector<std::string> overrides;    // --set
  std::string out_root;                  // --out
  std::string run_id;                    // --run-id
  int array = 0;                         // --array N: shards
  std::vector<std::string> sbatch_args;  // passed to both sbatch calls
  bool dry_run = false;                  // write the scripts, submit nothing
  bool quiet = false;
};

struct SubmitOutcome {
  std::filesystem::path run_dir, array_script, merge_script;
  std::string array_job, merge_job;
};

SubmitOutcome submit_run(const SubmitOptions& options);

}  // namespace qsweep
