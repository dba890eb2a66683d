// From ranges to quantizers: activation calibration and weight fake-quantization, shared
// by every experiment.
#pragma once

#include <vector>

#include "experiments/config.h"
#include "runtime/data.h"
#include "runtime/executor.h"

namespace qsweep {

// Min/max of every activation value of the float32 network over a calibration set.
struct ActivationRanges {
  std::vector<float> lo, hi;  // indexed by value id; +inf/-inf for values never seen
};

ActivationRanges calibrate(const Executor& exec, const Dataset& data, const Normalization& norm,
                           int64_t count, int64_t batch_size, int threads);

// Fake-quantized copy of layer L's weights at `bits` (min/max range, per tensor or per
// output channel).
Tensor quantize_weights(const Graph& g, const Layer& L, int bits, Scheme scheme, Granularity granularity);

// The LayerQuantization of layer L at weight `bits` (weights must outlive it).
LayerQuantization make_layer_quantization(const Layer& L, const Tensor* weights, const ActivationRanges& r,
                                          const Config& cfg);

}  // namespace qsweep
