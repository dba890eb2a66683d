// The paper's two findings as experiments: additivity of per-layer contributions
// (Figures 2 and 9) and local vs global fixes (Section 4.2, Table 1).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "experiments/config.h"
#include "experiments/layerwise.h"
#include "experiments/stats.h"

namespace qsweep {

// What every study needs: the float32 network, its data and calibration.
struct StudyContext {
  const Executor* exec = nullptr;  // the original float32 network
  const Dataset* calib = nullptr;
  const Dataset* eval = nullptr;
  Normalization norm;
  int64_t calib_count = 0, eval_count = 0;
  const ActivationRanges* ranges = nullptr;  // of the original network
  GridOptions options;
  // Where the single-layer grid (additivity) and the whole-network plans keep their finished
  // batches (GridOptions::store); null: a stopped run starts over.
  const BatchStore* grid_store = nullptr;
  const BatchStore* plan_store = nullptr;
};

// K subsets of layer indices with sizes spread evenly from 1 to `layers`, seeded.
std::vector<std::vector<int>> additivity_subsets(int layers, int configs, uint64_t seed);

struct AdditivityRow {
  std::vector<int> low_layers;
  double predicted_degradation = 0, measured_degradation = 0;
  double predicted_noise = 0, measured_noise = 0;
  double measured_top1 = 0, measured_top5 = 0;
  Interval ci;
};

struct AdditivityResult {
  GridResult grid;  // single-layer grid at {low_bits, high_bits}
  std::vector<AdditivityRow> rows;
  double r_degradation = 0, slope_degradation = 0, r_noise = 0, slope_noise = 0;
};

AdditivityResult run_additivity(const StudyContext& ctx, const Config& cfg, const PairedBootstrap& boot);

struct VariantRow {
  std::string name, description;
  double top1 = 0, degradation = 0, noise = 0;
  double top5 = 0, top5_degradation = 0;
  Interval ci, ci5;  // bootstrap intervals of the top-1 and the top-5 degradation
};

struct ComparisonResult {
  GridResult eval;  // cells[i] belongs to variant i
  std::vector<VariantRow> rows;
  std::string layers_csv;  // every variant's layers: ranges as quantized (variant_layers_rows)
};

// kind = "full": the whole network quantized under each variant (or the base [quant]).
ComparisonResult run_comparison(const StudyContext& ctx, const Config& cfg, const PairedBootstrap& boot);

std::string additivity_csv(const AdditivityResult& r, const Config& cfg);
std::string comparison_csv(const ComparisonResult& r);

}  // namespace qsweep
