// From ranges to quantizers: activation calibration, per-layer quantization specs (global
// settings plus [[quant.layer]] overrides), weight fake-quantization with the clipping
// methods, and the statistics that explain a bad layer.
#pragma once

#include <atomic>
#include <span>
#include <utility>
#include <vector>

#include "experiments/config.h"
#include "runtime/data.h"
#include "runtime/executor.h"

namespace qsweep {

// Min/max of every activation value of the float32 network over a calibration set.
struct ActivationRanges {
  std::vector<float> lo, hi;  // indexed by value id; +inf/-inf for values never seen
};

// With `stop` set during the pass, the remaining batches are skipped: the caller must check
// it and discard the ranges.
ActivationRanges calibrate(const Executor& exec, const Dataset& data, const Normalization& norm,
                           int64_t count, int64_t batch_size, int threads, const std::atomic<bool>* stop = nullptr);

// Which layers a selector list picks (indices, exact names, glob patterns). Throws
// UserError citing `where` when a selector matches nothing.
std::vector<int> select_layers(const Graph& g, const std::vector<std::string>& selectors, const std::string& where,
                               const std::vector<char>& is_index = {});

// The spec of every layer: q.base with the matching [[quant.layer]] overrides applied in order.
// `applied`, where given: per layer, the overrides applied to it, in order.
std::vector<QuantSpec> resolve_layer_specs(const Graph& g, const QuantConfig& q,
                                           std::vector<std::vector<const LayerOverride*>>* applied = nullptr);

// A layer's fake-quantized weights and the range they were quantized with.
struct QuantizedWeights {
  Tensor weights;
  float range_lo = 0.0f, range_hi = 0.0f;  // per tensor; per channel: the widest channel range
  double clip_fraction = 0.0;              // weights outside their (channel's) range
};

// Fake-quantizes layer L's weights at `bits` with spec's scheme, granularity and clipping.
// With `stop` set during an MSE clip search, it returns early with weights to discard: the
// caller checks the flag.
QuantizedWeights quantize_weights(const Graph& g, const Layer& L, const QuantSpec& spec, int bits,
                                  const std::atomic<bool>* stop = nullptr);

// The activation quantizers of layer L under `spec` (the caller points weights/bias at
// tensors that outlive it: see QuantizedLayer::finalize).
LayerQuantization make_layer_quantization(const Layer& L, const ActivationRanges& r, const QuantSpec& spec);

// Weight statistics of one layer (Figure 6), at the spec and bit-width given.
struct LayerStats {
  float weight_min = 0, weight_max = 0;
  float range_min = 0, range_max = 0;
  double clip_fraction = 0;
  double kurtosis = 0;              // E[(w - mu)^4] / sigma^4 (3 for a Gaussian)
  double channel_range_spread = 0;  // max / median of the per-output-channel ranges
};
LayerStats layer_stats(const Graph& g, const Layer& L, const QuantSpec& spec, int bits);
std::string layers_csv(const Graph& g, const std::vector<QuantSpec>& specs, int bits);
// weight_clip = "sawb" only where its coefficients exist (2..8 bits), checked on the layers as
// resolved (overrides apply in order): `grid_bits` are the bit-widths a grid or an additivity run
// quantizes every layer at (named `bits_from`), empty where each layer's own weight_bits apply
// (kind = "full"). UserError names the override that set the layer's clip or bits, else
// `base_where`.
void check_sawb_bits(const Graph& g, const QuantConfig& q, const std::vector<int>& grid_bits,
                     const std::string& bits_from, const std::string& base_where);
// layers.csv of a comparison: a leading `variant` column, and each variant's layers at their own
// weight bit-widths, on the variant's graph (equalized where the variant asks).
std::string variant_layers_header();
std::string variant_layers_rows(const std::string& variant, const Graph& g, const std::vector<QuantSpec>& specs);

// Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization Through Weight
// Equalization and Bias Correction"; Meller et al. 2019): for every Conv -> (ReLU |
// LeakyReLU | none) -> Conv pair where the first conv's output reaches only the second,
// output channel i of the first is divided by s_i and input channel i of the second
// multiplied by it, s_i = sqrt(r1_i / r2_i) with r the per-channel weight ranges, so both
// get the range sqrt(r1_i * r2_i). Float outputs are unchanged (positive scaling commutes
// with ReLU). Iterated to convergence; returns the number of pairs.
int equalize_cross_layer(Graph& g, int iterations = 20);

// Empirical bias correction: per output channel, the mean over calibration images (and
// positions) of layer(x) - layer_quantized(x) before the activation; adding it to the bias
// removes the mean shift quantization causes. Returns the corrected bias.
Tensor bias_correction(const Executor& exec, int layer, const LayerQuantization& q, const Dataset& data,
                       const Normalization& norm, int64_t count, int64_t batch_size, int threads);

// bias_correction() for several (layer, quantization) pairs in one pass over the calibration
// images: each batch runs through the float network once and serves every pair (only the
// pair's layer node runs again). Element i equals bias_correction() of pair i, bit for bit.
// With `stop` set during the pass, the remaining batches are skipped: the caller must check
// it and discard the biases.
std::vector<Tensor> bias_corrections(const Executor& exec, std::span<const std::pair<int, const LayerQuantization*>> cells,
                                     const Dataset& data, const Normalization& norm, int64_t count, int64_t batch_size,
                                     int threads, const std::atomic<bool>* stop = nullptr);

}  // namespace qsweep
