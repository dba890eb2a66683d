// The layer-wise grid (method.md; the paper's Algorithm 1): every layer x every weight
// bit-width, only that layer quantized, over the whole evaluation set, in one pass.
#pragma once

#include <algorithm>
#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "experiments/config.h"
#include "experiments/quant_plan.h"
#include "kernels/cpu/metrics.h"
#include "runtime/data.h"
#include "runtime/executor.h"

namespace qsweep {

// Per-image outcomes and sums of one quantized configuration over the evaluation set.
struct CellStats {
  int layer = -1;          // grid cells: the quantized layer; -1 for many-layer configurations
  int weight_bits = 0;
  double noise_sum = 0.0;  // sum over images of ||y - y_hat||^2
  int64_t correct = 0;     // images whose argmax(y_hat) is the label
  // Per image: the outcome bits of kernels/cpu/metrics.h (kTop1Bit, kTop5Bit).
  std::vector<uint8_t> correct_images;
  int64_t correct5() const { return count_outcomes(correct_images.data(), correct_images.size(), kTop5Bit); }
};

struct GridResult {
  int64_t images = 0;
  int64_t float_correct = 0;
  double output_energy = 0.0;  // sum over images of ||y||^2
  std::vector<uint8_t> float_correct_images;  // outcome bits, as CellStats::correct_images
  std::vector<int> weight_bits;
  std::vector<CellStats> cells;  // grid: layer-major, bits in config order
  double seconds = 0.0;
  bool naive = false;

  double float_top1() const { return 100.0 * float_correct / images; }
  double top1(const CellStats& c) const { return 100.0 * c.correct / images; }
  double noise(const CellStats& c) const { return c.noise_sum / images; }
  double degradation(const CellStats& c) const { return float_top1() - top1(c); }
  int64_t float_correct5() const {
    return count_outcomes(float_correct_images.data(), float_correct_images.size(), kTop5Bit);
  }
  double float_top5() const { return 100.0 * float_correct5() / images; }
  double top5(const CellStats& c) const { return 100.0 * c.correct5() / images; }
  double top5_degradation(const CellStats& c) const { return float_top5() - top5(c); }
  // 10 log10(E||y||^2 / E||y - y_hat||^2); +inf when the cell adds no noise.
  double sqnr_db(const CellStats& c) const;
};

// run.batch_size = "auto" on a backend without a device session (the CPU): batches of at
// most 250 images (the measured sweet spot here, bench/RESULTS.md) and at least 32, and
// small enough that each of `threads` workers gets about 4 of the `images` (one batch per
// worker at a time: 40 batches of 250 would leave most of a 64-core machine idle).
int64_t cpu_auto_batch_size(int64_t images, int threads);

// Bytes one image of a batch keeps in a CPU worker during the grid: every value of its float
// forward (kept for the suffixes) and a suffix's recomputed values, from a one-image forward.
int64_t cpu_bytes_per_image(const Executor& exec);

// Values of the network's output (logits) per image, from a forward of two images; refuses an
// output that is not one row per image, (N, classes).
int64_t outputs_per_image(const Executor& exec);

// Bytes of the model's constants (weights, biases).
int64_t model_bytes(const Graph& g);

// The memory this process may still use, in bytes: MemAvailable of /proc/meminfo, or less
// where a cgroup limit (SLURM's --mem, a container) leaves less; 0 where nothing can be read.
int64_t available_memory_bytes();

struct BatchRecord;

// Where a run keeps the batches it has finished, so that a stopped run resumes
// (experiments/run.cpp: the files of its work folder). load(b) gives batch b's record from
// an earlier attempt, if there is one; the grid checks it holds the cells it needs and
// computes the batch again if not. save() is called from worker threads.
struct BatchStore {
  std::function<std::optional<BatchRecord>(int64_t batch)> load;
  std::function<void(const BatchRecord&)> save;
  // Optional: given this attempt's grid seconds so far, keeps and returns the total over the
  // attempts (earlier ones' read where the records are), so that a resumed grid's seconds
  // cover every attempt, also one killed outright. Called after each save and at the end.
  std::function<double(double)> seconds;
};

class Progress;

struct GridOptions {
  int64_t batch_size = 250;
  int threads = 1;
  bool naive = false;
  bool progress = true;
  // Set by a signal handler: the grid stops after the batches in flight and throws
  // RunInterrupted (a sharded layer-wise run uses GridJob::stop instead).
  const std::atomic<bool>* stop = nullptr;
  // Where finished batches are kept (one-pass grids and network plans; the naive grid keeps
  // none). Null: kept in memory only, and a stopped run starts over.
  const BatchStore* store = nullptr;
  // Several workers of one grid (run.devices) count into one progress line; null: its own.
  Progress* shared_progress = nullptr;
};

// A stop was requested (SIGINT/SIGTERM) where nothing can be kept: a grid without records, or
// the report of a run whose folder would look finished without its figures. Nothing that
// looks finished is left; the CLI exits 143.
class RunInterrupted : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws RunInterrupted when opt.stop is set.
void throw_if_stopped(const GridOptions& opt);

// Where empirical bias correction takes its calibration images from.
struct BiasCorrectionSource {
  const Dataset* data = nullptr;
  Normalization norm;
  int64_t count = 0;
};

// One quantized layer: its weights, optional corrected bias, and quantizers.
struct QuantizedLayer {
  int layer = 0;
  int bits = 0;
  QuantizedWeights weights;
  Tensor bias;
  bool corrected_bias = false;
  LayerQuantization q;  // points into this object: do not copy after finalize()
  void finalize() {
    q.weights = &weights.weights;
    q.bias = corrected_bias ? &bias : nullptr;
  }
};

// Quantizes layer `layer` at `bits` under `spec`: weights once, the bias corrected when
// asked (bc != nullptr).
std::unique_ptr<QuantizedLayer> quantize_layer(const Executor& exec, int layer, const QuantSpec& spec, int bits,
                                               const ActivationRanges& ranges, const BiasCorrectionSource* bc,
                                               int64_t batch_size, int threads);

// quantize_layer() for many (layer, bits) pairs, layer l under specs[l]; with bc, every
// bias from one pass over the calibration images (bias_corrections()). Element i equals
// quantize_layer() of pair i.
// A stop (`stop` set) between two layers' weights or during the bias correction throws
// RunInterrupted.
std::vector<std::unique_ptr<QuantizedLayer>> quantize_layers(const Executor& exec,
                                                             std::span<const std::pair<int, int>> layer_bits,
                                                             const std::vector<QuantSpec>& specs,
                                                             const ActivationRanges& ranges,
                                                             const BiasCorrectionSource* bc, int64_t batch_size,
                                                             int threads, const std::atomic<bool>* stop = nullptr);

// Runs the grid: weight_bits x layers under per-layer specs. The one-pass way: each batch
// is decoded and run through the float32 network once, and each cell restarts from its
// layer's cached input (the suffix). The naive way: for each cell, every batch is decoded
// again and run through the whole network. Both give identical numbers: every batch is
// processed by one thread with the same ops, and per-batch sums are added in batch order.
GridResult run_layerwise_grid(const Executor& exec, const Dataset& eval, const Normalization& norm, int64_t count,
                              const ActivationRanges& ranges, const std::vector<QuantSpec>& specs,
                              const std::vector<int>& weight_bits, const GridOptions& options,
                              const BiasCorrectionSource* bc = nullptr);

// What one batch contributes: the float32 outcomes and, for each cell computed on it, the
// noise sum, the correct count and the per-image outcomes. Grids are assembled from these
// in batch order, so a grid computed in pieces (shards, resumed runs) is bit-identical to
// one computed at once.
struct BatchRecord {
  int64_t batch = 0, begin = 0, images = 0;
  int64_t float_correct = 0;
  double energy = 0.0;
  std::vector<uint8_t> float_flags;
  std::vector<int> cells;  // global cell indices (layer * bit-widths + bit index)
  std::vector<double> noise;
  std::vector<int64_t> correct;
  std::vector<std::vector<uint8_t>> flags;
};

// Whether `rec` holds batch rec.batch's images as batches of `batch_size` among `count` images
// cut them (a record made with another batch size does not).
inline bool record_fits_batches(const BatchRecord& rec, int64_t batch_size, int64_t count) {
  return rec.begin == rec.batch * batch_size && rec.images == std::min(batch_size, count - rec.begin);
}

// Binary encoding with a checksum; decode returns nothing for a damaged or foreign file.
std::string encode_record(const BatchRecord& r);
std::optional<BatchRecord> decode_record(const std::string& bytes);
// Whether bytes are a record of an earlier format (decode_record refuses those).
bool is_old_record(const std::string& bytes);

// A piece of a grid: which cells to compute on which batch, what is already done, and
// where finished batches go.
struct GridJob {
  std::vector<std::vector<int>> cells_of_batch;  // per batch; empty: skip the batch
  std::function<bool(int64_t)> done;             // true: the batch is already recorded (resume)
  std::function<void(BatchRecord&&)> sink;       // called from worker threads, one batch at a time each
  const std::atomic<bool>* stop = nullptr;       // set: finish the batches in flight, start no more
};

// The one-pass grid over a job; cell_quant[c] quantizes cell c's layer (nullptr where no
// batch of the job needs cell c). Returns false when stopped before the end.
bool run_grid_batches(const Executor& exec, const Dataset& eval, const Normalization& norm, int64_t count,
                      const std::vector<const LayerQuantization*>& cell_quant, size_t bits_per_layer,
                      const GridJob& job, const GridOptions& options);

// Assembles a grid from records covering every (batch, cell) once; throws on a gap.
GridResult assemble_grid(std::vector<BatchRecord> records, size_t layers, const std::vector<int>& weight_bits,
                         int64_t count, int64_t batch_size);

// Evaluates whole-network plans (any set of layers quantized at once, full forwards) over
// the evaluation set; result.cells[i] belongs to plans[i] (layer = -1).
GridResult run_network_plans(const Executor& exec, const Dataset& eval, const Normalization& norm, int64_t count,
                             const std::vector<QuantPlan>& plans, const GridOptions& options, const char* label);

}  // namespace qsweep
