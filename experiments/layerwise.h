// The layer-wise grid (method.md; the paper's Algorithm 1): every layer x every weight
// bit-width, only that layer quantized, over the whole evaluation set, in one pass.
#pragma once

#include <vector>

#include "experiments/config.h"
#include "experiments/quant_plan.h"
#include "runtime/data.h"
#include "runtime/executor.h"

namespace qsweep {

struct CellStats {
  int layer = 0;
  int weight_bits = 0;
  double noise_sum = 0.0;  // sum over images of ||y - y_hat||^2
  int64_t correct = 0;     // images whose argmax(y_hat) is the label
};

struct GridResult {
  int64_t images = 0;
  int64_t float_correct = 0;
  double output_energy = 0.0;  // sum over images of ||y||^2
  std::vector<int> weight_bits;
  std::vector<CellStats> cells;  // layer-major, bits in config order
  double seconds = 0.0;
  bool naive = false;

  double float_top1() const { return 100.0 * float_correct / images; }
  double top1(const CellStats& c) const { return 100.0 * c.correct / images; }
  double noise(const CellStats& c) const { return c.noise_sum / images; }
  double degradation(const CellStats& c) const { return float_top1() - top1(c); }
  // 10 log10(E||y||^2 / E||y - y_hat||^2); +inf when the cell adds no noise.
  double sqnr_db(const CellStats& c) const;
};

struct GridOptions {
  int64_t batch_size = 250;
  int threads = 1;
  bool naive = false;
  bool progress = true;
};

// Runs the grid. The one-pass way: each batch is decoded and run through the float32
// network once, and each cell restarts from its layer's cached input (the suffix). The
// naive way: for each cell, every batch is decoded again and run through the whole network.
// Both give identical numbers: every batch is processed by one thread with the same ops,
// and per-batch sums are added in batch order.
GridResult run_layerwise_grid(const Executor& exec, const Dataset& eval, const Normalization& norm,
                              int64_t count, const ActivationRanges& ranges, const Config& cfg,
                              const GridOptions& options);

}  // namespace qsweep
