#include "experiments/quant_plan.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fnmatch.h>
#include <limits>
#include <string>

#include <fmt/format.h>
#include <omp.h>

#include "experiments/batches.h"
#include "experiments/results.h"
#include "kernels/cpu/clipping.h"
#include "kernels/cpu/fake_quant.h"
#include "runtime/error.h"

namespace qsweep {

namespace {

// The float32 network's values that quantization and the metrics read must be finite on the
// calibration images: a NaN or infinity there (weights that overflow, a data.std near 0)
// would make every cell's numbers NaN or infinite. min_max() skips NaNs, so `nan` (by value
// id) says which values had one; a value that is NaN throughout also shows as the empty range
// (+inf, -inf).
void check_finite_ranges(const Graph& g, const ActivationRanges& r, const std::vector<uint8_t>& nan) {
  auto check = [&](int v, const std::string& what) {
    if (v < 0 || g.values[v].is_constant) return;
    if (!nan[v] && std::isfinite(r.lo[v]) && std::isfinite(r.hi[v])) return;
    const bool empty = r.lo[v] > r.hi[v];
    user_error("calibration: {} ('{}') is {} on the calibration images{}; qsweep needs a finite float32 network "
               "(check the model's weights and data.mean / data.std)",
               what, g.values[v].name,
               empty ? "NaN throughout" : nan[v] ? "NaN on some of them" : "not finite",
               empty    ? ""
               : nan[v] ? fmt::format(" (its other values in [{}, {}])", r.lo[v], r.hi[v])
                        : fmt::format(" (range [{}, {}])", r.lo[v], r.hi[v]));
  };
  for (const Layer& L : g.layers) {
    check(L.input_value, fmt::format("the input of layer {} '{}'", L.index, L.name));
    check(L.output_value, fmt::format("the output of layer {} '{}'", L.index, L.name));
  }
  check(g.output, "the network's output");
}

}  // namespace

ActivationRanges calibrate(const Executor& exec, const Dataset& data, const Normalization& norm, int64_t count,
                           int64_t batch_size, int threads, const std::atomic<bool>* stop) {
  auto stopped = [stop] { return stop != nullptr && stop->load(); };
  const Graph& g = exec.graph();
  const size_t nv = g.values.size();
  count = std::min(count, data.count);
  const int64_t batches = (count + batch_size - 1) / batch_size;
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (auto session = exec.backend().make_session(g)) {  // on the device: every value materialized
    ActivationRanges r;
    r.lo.assign(nv, kInf);
    r.hi.assign(nv, -kInf);
    std::vector<uint8_t> nan(nv, 0);
    for_each_device_batch(
        *session, data, norm, count, batch_size, all_batches(count, batch_size),
        [](int64_t) { return std::span<const DeviceJob>(); }, true,
        [&](int64_t, int64_t, int64_t, DeviceOutcome&) { session->widen_ranges(r.lo, r.hi, nan); }, stop);
    if (!stopped()) check_finite_ranges(g, r, nan);
    return r;
  }
  std::vector<std::vector<float>> lo(batches, std::vector<float>(nv, kInf)), hi(batches, std::vector<float>(nv, -kInf));
  std::vector<std::vector<uint8_t>> nan(batches, std::vector<uint8_t>(nv, 0));
  for_each_batch(exec, data, norm, count, batch_size, threads,
                 [&](Executor::Workspace& ws, const Tensor& x, int64_t b, int64_t, int64_t) {
                   if (stopped()) return;  // the caller discards the ranges
                   ws.keep_all_values = true;  // the ranges of every value, conv outputs included
                   exec.forward(ws, x);
                   for (size_t v = 0; v < nv; ++v) {
                     if (g.values[v].is_constant || ws.values[v].data.empty()) continue;
                     min_max(ws.values[v].ptr(), ws.values[v].data.size(), &lo[b][v], &hi[b][v]);
                     nan[b][v] = any_nan(ws.values[v].ptr(), ws.values[v].data.size());
                   }
                 });
  ActivationRanges r;
  r.lo.assign(nv, kInf);
  r.hi.assign(nv, -kInf);
  std::vector<uint8_t> any(nv, 0);
  for (int64_t b = 0; b < batches; ++b) {  // min/max are exact: the order does not matter
    for (size_t v = 0; v < nv; ++v) {
      r.lo[v] = std::min(r.lo[v], lo[b][v]);
      r.hi[v] = std::max(r.hi[v], hi[b][v]);
      any[v] |= nan[b][v];
    }
  }
  if (!stopped()) check_finite_ranges(g, r, any);
  return r;
}

std::vector<int> select_layers(const Graph& g, const std::vector<std::string>& selectors, const std::string& where,
                               const std::vector<char>& is_index) {
  std::vector<int> out;
  for (size_t i = 0; i < selectors.size(); ++i) {
    const std::string& s = selectors[i];
    bool matched = false;
    // An integer is an index. A string is a layer's exact name first (names may be digits, or
    // hold * ? [), then an index where it is all digits, then a glob pattern.
    const bool integer = i < is_index.size() && is_index[i];
    const bool named = !integer && std::any_of(g.layers.begin(), g.layers.end(), [&](const Layer& L) { return L.name == s; });
    const bool numeric = integer || (!named && !s.empty() && std::all_of(s.begin(), s.end(), ::isdigit));
    const bool glob = !named && s.find_first_of("*?[") != std::string::npos;
    for (const Layer& L : g.layers) {
      const bool hit = numeric ? std::to_string(L.index) == s
                               : glob ? fnmatch(s.c_str(), L.name.c_str(), 0) == 0 : L.name == s;
      if (hit) {
        matched = true;
        if (std::find(out.begin(), out.end(), L.index) == out.end()) out.push_back(L.index);
      }
    }
    if (!matched) {
      user_error("{}: the layer selector '{}' matches no layer; layers are 0..{} (see `qsweep layers MODEL`)", where, s,
                 g.layers.size() - 1);
    }
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<QuantSpec> resolve_layer_specs(const Graph& g, const QuantConfig& q,
                                           std::vector<std::vector<const LayerOverride*>>* applied) {
  std::vector<QuantSpec> specs(g.layers.size(), q.base);
  if (applied) applied->assign(g.layers.size(), {});
  for (const LayerOverride& o : q.layers) {
    for (int l : select_layers(g, o.selectors, o.where, o.is_index)) {
      if (applied) (*applied)[l].push_back(&o);
      QuantSpec& s = specs[l];
      if (o.weight_bits) s.weight_bits = *o.weight_bits;
      if (o.act_bits) s.act_bits = *o.act_bits;
      if (o.scheme) s.scheme = *o.scheme;
      if (o.granularity) s.granularity = *o.granularity;
      if (o.clip) s.clip = *o.clip;
      if (o.percentile) s.percentile = *o.percentile;
    }
  }
  return specs;
}

void check_sawb_bits(const Graph& g, const QuantConfig& q, const std::vector<int>& grid_bits,
                     const std::string& bits_from, const std::string& base_where) {
  std::vector<std::vector<const LayerOverride*>> applied;
  const std::vector<QuantSpec> specs = resolve_layer_specs(g, q, &applied);
  for (const Layer& L : g.layers) {
    if (specs[L.index].clip != ClipMethod::kSawb) continue;
    std::string where = base_where;  // what set the layer's clip (or its own bits) last
    for (const LayerOverride* o : applied[L.index]) {
      if (o->clip || (o->weight_bits && grid_bits.empty())) where = o->where;
    }
    const std::vector<int> used = grid_bits.empty() ? std::vector<int>{specs[L.index].weight_bits} : grid_bits;
    for (const int b : used) {
      if (!sawb_coefficients(b)) {
        user_error("{}: layer {} '{}' is quantized with weight_clip = \"sawb\" at {} bits ({}); SAWB's coefficients "
                   "exist for 2..8 bits",
                   where, L.index, L.name, b, grid_bits.empty() ? "its weight_bits" : bits_from);
      }
    }
  }
}

namespace {

// The quantization range of one slice of weights under a clipping method.
void clip_range(const std::vector<float>& w, const QuantSpec& spec, int bits, float* lo, float* hi,
                const std::atomic<bool>* stop) {
  float mn, mx;
  min_max(w.data(), w.size(), &mn, &mx);
  float alpha = 0.0f;
  switch (spec.clip) {
    case ClipMethod::kMinMax:
      *lo = mn;
      *hi = mx;
      return;
    case ClipMethod::kPercentile:
      percentile_range(w.data(), w.size(), spec.percentile, lo, hi);
      return;
    case ClipMethod::kSawb:
      if (!sawb_coefficients(bits)) {
        user_error("weight_clip = \"sawb\" at {} bits: SAWB coefficients exist for 2..8 bits", bits);
      }
      alpha = sawb_clip(w.data(), w.size(), bits);
      // The fitted formula can go to (or below) zero for slices whose rms/mean|w| ratio is
      // near c2/c1 (a few equal-magnitude weights, e.g. a small depthwise kernel): no clip.
      if (!(alpha > 1e-3f * std::max(std::fabs(mn), std::fabs(mx)))) alpha = std::max(std::fabs(mn), std::fabs(mx));
      break;
    case ClipMethod::kMse:
      alpha = mse_clip(w.data(), w.size(), bits, spec.scheme, spec.mse_grid, stop);
      if (std::isnan(alpha)) alpha = std::max(std::fabs(mn), std::fabs(mx));  // stopped: discarded by the caller
      break;
  }
  *lo = std::max(mn, -alpha);
  *hi = std::min(mx, alpha);
}

// The weights of output channel c of layer L, gathered from the (outer, channels, inner) layout.
std::vector<float> channel_slice(const Tensor& w, const Layer& L, int64_t c) {
  std::vector<float> s;
  s.reserve(L.w_outer * L.w_inner);
  for (int64_t o = 0; o < L.w_outer; ++o) {
    const float* p = w.ptr() + (o * L.w_channels + c) * L.w_inner;
    s.insert(s.end(), p, p + L.w_inner);
  }
  return s;
}

}  // namespace

QuantizedWeights quantize_weights(const Graph& g, const Layer& L, const QuantSpec& spec, int bits,
                                  const std::atomic<bool>* stop) {
  const Tensor& w = g.constant(L.weight_value);
  QuantizedWeights out;
  out.weights = Tensor(w.shape);
  if (spec.granularity == Granularity::kPerTensor) {
    float lo, hi;
    clip_range(w.data, spec, bits, &lo, &hi, stop);
    fake_quantize_per_tensor(w.ptr(), out.weights.ptr(), w.data.size(), choose_quant_params(lo, hi, bits, spec.scheme));
    out.range_lo = lo;
    out.range_hi = hi;
    out.clip_fraction = clipped_fraction(w.ptr(), w.data.size(), lo, hi);
  } else {
    std::vector<QuantParams> p(L.w_channels);
    size_t clipped = 0;
    out.range_lo = std::numeric_limits<float>::infinity();
    out.range_hi = -std::numeric_limits<float>::infinity();
    for (int64_t c = 0; c < L.w_channels; ++c) {
      const std::vector<float> s = channel_slice(w, L, c);
      float lo, hi;
      clip_range(s, spec, bits, &lo, &hi, stop);
      p[c] = choose_quant_params(lo, hi, bits, spec.scheme);
      clipped += static_cast<size_t>(std::llround(clipped_fraction(s.data(), s.size(), lo, hi) * s.size()));
      out.range_lo = std::min(out.range_lo, lo);
      out.range_hi = std::max(out.range_hi, hi);
    }
    fake_quantize_per_channel(w.ptr(), out.weights.ptr(), L.w_outer, L.w_channels, L.w_inner, p.data());
    out.clip_fraction = static_cast<double>(clipped) / static_cast<double>(w.data.size());
  }
  return out;
}

LayerQuantization make_layer_quantization(const Layer& L, const ActivationRanges& r, const QuantSpec& spec) {
  LayerQuantization q;
  q.quantize_input = spec.quantize_input;
  q.quantize_output = spec.quantize_output;
  q.input = choose_quant_params(r.lo[L.input_value], r.hi[L.input_value], spec.act_bits, spec.scheme);
  q.output = choose_quant_params(r.lo[L.output_value], r.hi[L.output_value], spec.act_bits, spec.scheme);
  return q;
}

LayerStats layer_stats(const Graph& g, const Layer& L, const QuantSpec& spec, int bits) {
  const Tensor& w = g.constant(L.weight_value);
  LayerStats s;
  min_max(w.ptr(), w.data.size(), &s.weight_min, &s.weight_max);
  const QuantizedWeights q = quantize_weights(g, L, spec, bits);
  s.range_min = q.range_lo;
  s.range_max = q.range_hi;
  s.clip_fraction = q.clip_fraction;
  double mean = 0.0;
  for (float v : w.data) mean += v;
  mean /= static_cast<double>(w.data.size());
  double m2 = 0.0, m4 = 0.0;
  for (float v : w.data) {
    const double d = v - mean;
    m2 += d * d;
    m4 += d * d * d * d;
  }
  m2 /= static_cast<double>(w.data.size());
  m4 /= static_cast<double>(w.data.size());
  s.kurtosis = m2 > 0 ? m4 / (m2 * m2) : 0.0;
  std::vector<double> ranges;
  for (int64_t c = 0; c < L.w_channels; ++c) {
    const auto sl = channel_slice(w, L, c);
    float lo, hi;
    min_max(sl.data(), sl.size(), &lo, &hi);
    ranges.push_back(static_cast<double>(hi) - lo);
  }
  std::vector<double> sorted = ranges;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  s.channel_range_spread = median > 0 ? sorted.back() / median : std::numeric_limits<double>::infinity();
  return s;
}

namespace {

constexpr const char* kLayersHeader =
    "layer_index,layer_name,op_type,weight_min,weight_max,range_min,range_max,clip_fraction,kurtosis,"
    "channel_range_spread,weight_clip,granularity,bits\n";

// The rows of layers_csv(); bits 0: each layer at its spec's weight_bits. `prefix` starts each row.
std::string layers_rows(const Graph& g, const std::vector<QuantSpec>& specs, int bits, const std::string& prefix) {
  std::string out;
  for (const Layer& L : g.layers) {
    const int b = bits > 0 ? bits : specs[L.index].weight_bits;
    const LayerStats s = layer_stats(g, L, specs[L.index], b);
    const std::string name = csv_field(L.name);
    out += prefix + fmt::format("{},{},{},{:.9g},{:.9g},{:.9g},{:.9g},{:.6g},{:.6g},{:.6g},{},{},{}\n", L.index, name,
                                op_name(g.nodes[L.node].op), s.weight_min, s.weight_max, s.range_min, s.range_max,
                                s.clip_fraction, s.kurtosis, s.channel_range_spread, clip_name(specs[L.index].clip),
                                granularity_name(specs[L.index].granularity), b);
  }
  return out;
}

}  // namespace

std::string layers_csv(const Graph& g, const std::vector<QuantSpec>& specs, int bits) {
  return kLayersHeader + layers_rows(g, specs, bits, "");
}

std::string variant_layers_header() { return std::string("variant,") + kLayersHeader; }

std::string variant_layers_rows(const std::string& variant, const Graph& g, const std::vector<QuantSpec>& specs) {
  return layers_rows(g, specs, 0, csv_field(variant) + ",");
}

int equalize_cross_layer(Graph& g, int iterations) {
  const auto cons = g.consumers();
  struct Pair {
    int first, second;
  };
  std::vector<Pair> pairs;
  for (const Layer& L1 : g.layers) {
    const Node& n1 = g.nodes[L1.node];
    if (n1.op != OpType::kConv) continue;
    if (L1.act_node >= 0) {
      const OpType a = g.nodes[L1.act_node].op;
      if (a != OpType::kRelu && a != OpType::kLeakyRelu) continue;  // not positively homogeneous
    }
    const auto& users = cons[L1.output_value];
    if (users.size() != 1 || L1.output_value == g.output) continue;
    for (const Layer& L2 : g.layers) {
      if (L2.node == users[0] && g.nodes[L2.node].op == OpType::kConv && L2.input_value == L1.output_value) {
        pairs.push_back({L1.index, L2.index});
      }
    }
  }
  // Equalize on private copies of the constants (they may be shared initializers).
  auto own = [&](int& value) {
    const int v = g.add_constant(g.values[value].name + "_equalized", g.values[value].constant);
    value = v;
  };
  for (const Pair& p : pairs) {
    Layer& L1 = g.layers[p.first];
    Layer& L2 = g.layers[p.second];
    Node& n1 = g.nodes[L1.node];
    Node& n2 = g.nodes[L2.node];
    own(n1.inputs[1]);
    L1.weight_value = n1.inputs[1];
    if (n1.inputs.size() > 2) {
      own(n1.inputs[2]);
      L1.bias_value = n1.inputs[2];
    }
    own(n2.inputs[1]);
    L2.weight_value = n2.inputs[1];
  }
  for (int it = 0; it < iterations; ++it) {
    double change = 0.0;
    for (const Pair& p : pairs) {
      const Layer& L1 = g.layers[p.first];
      const Layer& L2 = g.layers[p.second];
      Tensor& w1 = g.values[L1.weight_value].constant;  // (C, I1/g1, kh, kw)
      Tensor& w2 = g.values[L2.weight_value].constant;  // (O, C/g2, kh, kw)
      const int64_t C = w1.dim(0);
      const int64_t g2 = g.nodes[L2.node].attrs.group;
      const int64_t per_group_in = w2.dim(1), per_group_out = w2.dim(0) / g2, k2 = w2.dim(2) * w2.dim(3);
      const int64_t per1 = w1.numel() / C;
      for (int64_t c = 0; c < C; ++c) {
        float r1 = 0.0f, r2 = 0.0f;
        for (int64_t i = 0; i < per1; ++i) r1 = std::max(r1, std::fabs(w1.data[c * per1 + i]));
        const int64_t grp = c / per_group_in, local = c % per_group_in;
        for (int64_t o = grp * per_group_out; o < (grp + 1) * per_group_out; ++o) {
          for (int64_t k = 0; k < k2; ++k) r2 = std::max(r2, std::fabs(w2.data[(o * per_group_in + local) * k2 + k]));
        }
        if (r1 == 0.0f || r2 == 0.0f) continue;
        const double s = std::sqrt(static_cast<double>(r1) / r2);  // range of both becomes sqrt(r1 * r2)
        change = std::max(change, std::fabs(std::log(s)));
        for (int64_t i = 0; i < per1; ++i) w1.data[c * per1 + i] = static_cast<float>(w1.data[c * per1 + i] / s);
        if (L1.bias_value >= 0) {
          float& b = g.values[L1.bias_value].constant.data[c];
          b = static_cast<float>(b / s);
        }
        for (int64_t o = grp * per_group_out; o < (grp + 1) * per_group_out; ++o) {
          for (int64_t k = 0; k < k2; ++k) {
            float& v = w2.data[(o * per_group_in + local) * k2 + k];
            v = static_cast<float>(v * s);
          }
        }
      }
    }
    if (change < 1e-6) break;
  }
  return static_cast<int>(pairs.size());
}

std::vector<Tensor> bias_corrections(const Executor& exec, std::span<const std::pair<int, const LayerQuantization*>> cells,
                                     const Dataset& data, const Normalization& norm, int64_t count, int64_t batch_size,
                                     int threads, const std::atomic<bool>* stop) {
  const Graph& g = exec.graph();
  const size_t J = cells.size();
  const auto stopped = [stop] { return stop != nullptr && stop->load(); };
  if (J == 0) return {};
  for (const auto& [layer, q] : cells) {
    // A Gemm scales its C input by beta: a corrected C would move the output by beta times
    // the correction (and the fused CUDA kernel adds it unscaled).
    const Node& node = g.nodes[g.layers[layer].node];
    if (node.op == OpType::kGemm && node.attrs.beta != 1.0f) {
      user_error("node '{}' (Gemm) has beta = {}; empirical bias correction (quant.bias_correction) supports Gemm "
                 "layers with beta = 1 only",
                 node.name, node.attrs.beta);
    }
  }
  count = std::min(count, data.count);
  const int64_t batches = (count + batch_size - 1) / batch_size;
  // Per batch, per pair, per output channel; and positions per image of each pair's output.
  std::vector<std::vector<std::vector<double>>> sums(batches, std::vector<std::vector<double>>(J));
  std::vector<int64_t> per_image(J, 0);
  // On a device: one materialized float forward per batch, then every pair's layer node in
  // the fused kernel and its per-channel sums, with only the sums coming back
  // (DeviceSession::bias_sums). QSWEEP_HOST_BIAS_CORRECTION=1 keeps the host's path (the GPU
  // benchmark compares the two).
  const char* host_only = std::getenv("QSWEEP_HOST_BIAS_CORRECTION");
  bool on_device = false;
  if (host_only == nullptr || std::string(host_only) != "1") {
    if (auto session = exec.backend().make_session(g)) {
      session->prepare(cells);
      const std::span<const DeviceJob> no_jobs;
      std::atomic<bool> unsupported{false};  // stops the batches at once
      for_each_device_batch(
          *session, data, norm, count, batch_size, all_batches(count, batch_size),
          [&](int64_t) { return no_jobs; }, true,
          [&](int64_t i, int64_t, int64_t, DeviceOutcome&) {
            if (stopped() || !session->bias_sums(cells, sums[i], per_image)) unsupported = true;
          },
          &unsupported);
      on_device = !unsupported;
      if (stopped()) return {};
    }
  }
  if (!on_device) for_each_batch(exec, data, norm, count, batch_size, threads,
                 [&](Executor::Workspace& ws, const Tensor& x, int64_t b, int64_t, int64_t) {
                   if (stopped()) return;
                   ws.keep_all_values = true;  // the convs' pre-activation outputs are read below
                   exec.forward(ws, x);
                   Tensor y, yq;  // float and quantized pre-activation outputs, (N, C, ...) in NCHW order
                   int y_layer = -1;  // whose float output y holds (pairs of one layer come in a row)
                   for (size_t j = 0; j < J; ++j) {
                     const auto& [layer, q] = cells[j];
                     if (layer != y_layer) {
                       to_nchw(ws.values[g.nodes[g.layers[layer].node].output], y);
                       y_layer = layer;
                     }
                     to_nchw(exec.layer_node_output(ws, layer, *q), yq);
                     const ChannelLayout cl = output_channel_layout(g.nodes[g.layers[layer].node].op, y.shape);
                     const int64_t C = cl.channels, inner = cl.inner;
                     std::vector<double> s(C, 0.0);
                     for (int64_t i = 0; i < cl.outer; ++i) {
                       for (int64_t ch = 0; ch < C; ++ch) {
                         for (int64_t k = 0; k < inner; ++k) {
                           const int64_t idx = (i * C + ch) * inner + k;
                           s[ch] += static_cast<double>(y.data[idx]) - yq.data[idx];
                         }
                       }
                     }
                     sums[b][j] = std::move(s);
                     per_image[j] = cl.per_image;
                   }
                 });
  if (stopped()) return {};
  std::vector<Tensor> out;
  out.reserve(J);
  for (size_t j = 0; j < J; ++j) {
    const Layer& L = g.layers[cells[j].first];
    const int64_t channels = static_cast<int64_t>(sums[0][j].size());
    std::vector<double> total(channels, 0.0);
    for (const auto& s : sums) {  // batch order: deterministic
      for (int64_t ch = 0; ch < channels; ++ch) total[ch] += s[j][ch];
    }
    Tensor bias(Shape{channels});
    for (int64_t ch = 0; ch < channels; ++ch) {
      const double base = L.bias_value >= 0 ? g.constant(L.bias_value).data[ch] : 0.0;
      bias.data[ch] = static_cast<float>(base + total[ch] / static_cast<double>(count * per_image[j]));
    }
    out.push_back(std::move(bias));
  }
  return out;
}

Tensor bias_correction(const Executor& exec, int layer, const LayerQuantization& q, const Dataset& data,
                       const Normalization& norm, int64_t count, int64_t batch_size, int threads) {
  const std::pair<int, const LayerQuantization*> one[] = {{layer, &q}};
  return std::move(bias_corrections(exec, one, data, norm, count, batch_size, threads)[0]);
}

}  // namespace qsweep
