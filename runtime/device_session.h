// A device-resident run of one graph (the CUDA backend's): batches are staged onto the
// device, the float32 forward keeps every value there, and each job (a grid cell's suffix,
// or a whole-network plan) runs from those values with its metrics reduced on the device.
// Only per-job totals and per-image outcomes come back to the host.
//
// Backends without one return nullptr from Backend::make_session and the Executor runs.
#pragma once

#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "runtime/executor.h"
#include "runtime/tensor.h"

namespace qsweep {

// One job on a batch: a grid cell (layer >= 0: only that layer quantized by q, the suffix
// recomputed from its cached input) or a whole-network plan (plan != nullptr).
struct DeviceJob {
  int layer = -1;
  const LayerQuantization* q = nullptr;
  const QuantPlan* plan = nullptr;
};

// What one batch produced.
struct DeviceOutcome {
  int64_t images = 0;
  int64_t float_correct = 0;
  double energy = 0.0;               // sum over images of ||y||^2
  std::vector<uint8_t> float_flags;  // per image: argmax(y) == label
  std::vector<double> noise;         // per job: sum over images of ||y - y_hat||^2
  std::vector<int64_t> correct;      // per job
  std::vector<std::vector<uint8_t>> flags;  // per job, per image
};

class DeviceSession {
 public:
  virtual ~DeviceSession() = default;

  // Uploads what the given (layer, quantization) pairs need (weights, biases) once; jobs may
  // only use quantizations prepared in this session. Pointers must stay valid.
  virtual void prepare(std::span<const std::pair<int, const LayerQuantization*>> qs) = 0;

  // Starts copying a batch (n images, float32 (n, C, H, W)) and its labels to the device;
  // returns once the host buffers may be reused. Two batches may be staged ahead.
  virtual void stage(const Tensor& x, const int32_t* labels, int64_t n) = 0;

  // Runs, asynchronously, the float32 network on the oldest staged batch and then every
  // job. `materialize` keeps every value (no cuDNN conv+activation fusion), for calibration.
  virtual void launch(std::span<const DeviceJob> jobs, bool materialize = false) = 0;

  // Waits for the last launch and returns its outcome.
  virtual void collect(DeviceOutcome& out) = 0;

  // After a collect of a materialized launch: widens lo/hi (indexed by value id) by every
  // non-constant value's min/max on the device (NaNs ignored), and sets nan[v] to 1 for a
  // value with a NaN in it.
  virtual void widen_ranges(std::vector<float>& lo, std::vector<float>& hi, std::vector<uint8_t>& nan) = 0;

  // The largest batch (at most `cap`) whose values, suffix scratch and staging buffers fit
  // in half of the device's free memory.
  virtual int64_t max_batch(int64_t cap) = 0;

  // Empirical bias correction's statistic, after collect() of a materialized launch: for each
  // (layer, quantization) pair j, sums[j] receives per output channel the sum over the batch
  // of (float - quantized) layer node output, the quantized one with the pair's input
  // quantizer and weights and the layer's own bias, no activation and no output quantizer
  // (Executor::layer_node_output); per_image[j] the values per channel and image. Channels
  // as output_channel_layout() (runtime/graph.h) says, as on the host. Returns false, computing nothing, when a
  // pair's layer cannot run this way here (the caller then uses the host's path). The
  // quantizations must be prepared.
  virtual bool bias_sums(std::span<const std::pair<int, const LayerQuantization*>> cells,
                         std::vector<std::vector<double>>& sums, std::vector<int64_t>& per_image) = 0;

  // The weights a prepared quantization's layer runs with, as the device holds them, copied
  // back (in the layer's own layout): for tests.
  virtual Tensor prepared_weights(int layer, const LayerQuantization* q) = 0;
};

}  // namespace qsweep
