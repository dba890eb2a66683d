// `qsweep check`: a results folder against a baseline results folder, for regression sweeps
// that must fail loudly when a number moves.
//
// What is compared, row by row (rows matched by name, not by position):
//   layerwise.csv   each cell (layer name, weight bits, activation bits): top-1, noise, top-5
//   additivity.csv  each configuration: its layers, measured top-1, noise and top-5
//   comparison.csv  each variant: top-1, noise and top-5
//   the float32 network's top-1 (summary.json, else layerwise.csv) and top-5 (summary.json)
// Top-5 is compared where both folders have it (a context line says when one lacks it).
// A table present in one folder only, a row present on one side only, or a different number
// of evaluated images counts as moved. Top-1 is compared in percentage points (from the
// `correct` counts where the table has them, so "0 points" means the same count), noise
// relative to the larger of the two values. What differs between the two folders' manifests
// (model and dataset sha256, backend, git commit) and configs (every key but output.*, and
// model.path / data.path when both manifests give the sha256 of what was read) is listed as
// context, not counted.
#pragma once

#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace qsweep {

struct CheckOptions {
  double top1_tol = 0.0;     // points of top-1 a row may move (0: the same count of correct images)
  double top5_tol = 0.0;     // points of top-5 a row may move
  double noise_rtol = 1e-6;  // relative change of noise allowed (|a - b| <= rtol * max(|a|, |b|))
  int show = 20;             // moved rows printed at most (all go to the JSON report)
};

struct CheckRow {
  std::string table;                     // "layerwise.csv", "additivity.csv", "comparison.csv", "summary.json"
  std::string row;                       // e.g. "/conv1/Conv, 3-bit weights, 8-bit activations"
  std::string quantity;                  // "top-1", "top-5", "noise", or "row" (present on one side only, or different)
  double baseline = 0.0, current = 0.0;  // NaN where the quantity is absent on that side
  std::string detail;                    // for quantity "row": what differs
};

struct CheckResult {
  std::filesystem::path current, baseline;
  size_t compared = 0;                                    // numbers compared
  std::vector<CheckRow> moved;                            // beyond tolerance, in table order
  std::vector<std::pair<std::string, std::string>> rows;  // every (table, row) looked at, in order
  std::vector<std::string> context;                       // differences of manifests and configs, one line each
  std::string current_about, baseline_about;              // "git 1234abc, backend cpu (...), finished ..."
  double max_top1_move = 0.0;                             // the largest top-1 move compared (points)
  double max_top5_move = 0.0;                             // the largest top-5 move compared (points)
  double max_noise_move = 0.0;                            // the largest relative noise move compared
  bool passed() const { return moved.empty(); }
  size_t moved_numbers() const;                      // entries of `moved` that are numbers, not rows on one side only
  std::string verdict(const CheckOptions& o) const;  // "OK: ..." or "MOVED: ..." in one line
};

// Throws UserError when either folder does not exist or holds no layerwise.csv,
// additivity.csv or comparison.csv, or when a table lacks a column it needs or repeats a row.
CheckResult check_results(const std::filesystem::path& current, const std::filesystem::path& baseline,
                          const CheckOptions& options);

// The report a person reads: tolerances, context, the moved rows (at most options.show), and a
// last line that starts with "OK:" or "MOVED:".
std::string format_check(const CheckResult& r, const CheckOptions& options);

// The same as JSON (every moved row), for CI dashboards.
nlohmann::json check_json(const CheckResult& r, const CheckOptions& options);

// The same as a JUnit XML report (Jenkins, GitLab): one test case per row looked at, failed
// when any of its numbers moved (the message says which and by how much).
std::string check_junit(const CheckResult& r, const CheckOptions& options);

// Exit status of `qsweep check` (and of `qsweep run --check`) when a number moved.
constexpr int kCheckMovedExit = 3;

}  // namespace qsweep
