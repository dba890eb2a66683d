#include "experiments/quant_plan.h"

#include <algorithm>
#include <limits>

#include <omp.h>

#include "kernels/cpu/fake_quant.h"

namespace qsweep {

ActivationRanges calibrate(const Executor& exec, const Dataset& data, const Normalization& norm, int64_t count,
                           int64_t batch_size, int threads) {
  const Graph& g = exec.graph();
  const size_t nv = g.values.size();
  count = std::min(count, data.count);
  const int64_t chunks = (count + batch_size - 1) / batch_size;
  ActivationRanges r;
  r.lo.assign(nv, std::numeric_limits<float>::infinity());
  r.hi.assign(nv, -std::numeric_limits<float>::infinity());
#pragma omp parallel num_threads(threads)
  {
    auto ws = exec.make_workspace();
    std::vector<float> lo(nv, std::numeric_limits<float>::infinity());
    std::vector<float> hi(nv, -std::numeric_limits<float>::infinity());
    Tensor x;
#pragma omp for schedule(dynamic, 1)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t begin = c * batch_size;
      load_batch(data, norm, begin, std::min(batch_size, count - begin), x);
      exec.forward(ws, x);
      for (size_t v = 0; v < nv; ++v) {
        if (g.values[v].is_constant || ws.values[v].data.empty()) continue;
        float a, b;
        min_max(ws.values[v].ptr(), ws.values[v].data.size(), &a, &b);
        lo[v] = std::min(lo[v], a);
        hi[v] = std::max(hi[v], b);
      }
    }
    // min/max are exact, so the merge order does not matter.
#pragma omp critical
    for (size_t v = 0; v < nv; ++v) {
      r.lo[v] = std::min(r.lo[v], lo[v]);
      r.hi[v] = std::max(r.hi[v], hi[v]);
    }
  }
  return r;
}

Tensor quantize_weights(const Graph& g, const Layer& L, int bits, Scheme scheme, Granularity granularity) {
  const Tensor& w = g.constant(L.weight_value);
  Tensor out(w.shape);
  if (granularity == Granularity::kPerTensor) {
    float lo, hi;
    min_max(w.ptr(), w.data.size(), &lo, &hi);
    fake_quantize_per_tensor(w.ptr(), out.ptr(), w.data.size(), choose_quant_params(lo, hi, bits, scheme));
  } else {
    std::vector<float> lo(L.w_channels), hi(L.w_channels);
    min_max_per_channel(w.ptr(), L.w_outer, L.w_channels, L.w_inner, lo.data(), hi.data());
    std::vector<QuantParams> p(L.w_channels);
    for (int64_t c = 0; c < L.w_channels; ++c) p[c] = choose_quant_params(lo[c], hi[c], bits, scheme);
    fake_quantize_per_channel(w.ptr(), out.ptr(), L.w_outer, L.w_channels, L.w_inner, p.data());
  }
  return out;
}

LayerQuantization make_layer_quantization(const Layer& L, const Tensor* weights, const ActivationRanges& r,
                                          const Config& cfg) {
  LayerQuantization q;
  q.weights = weights;
  q.quantize_input = cfg.quantize_input;
  q.quantize_output = cfg.quantize_output;
  q.input = choose_quant_params(r.lo[L.input_value], r.hi[L.input_value], cfg.act_bits, cfg.scheme);
  q.output = choose_quant_params(r.lo[L.output_value], r.hi[L.output_value], cfg.act_bits, cfg.scheme);
  return q;
}

}  // namespace qsweep
