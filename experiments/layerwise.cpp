#include "experiments/layerwise.h"

#include <chrono>
#include <cmath>
#include <limits>

#include <omp.h>

#include "experiments/progress.h"
#include "kernels/cpu/metrics.h"

namespace qsweep {

double GridResult::sqnr_db(const CellStats& c) const {
  if (c.noise_sum == 0.0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(output_energy / c.noise_sum);
}

namespace {

// Per-batch partial sums, merged in batch order so results do not depend on threads.
struct BatchSums {
  int64_t float_correct = 0;
  double energy = 0.0;
  std::vector<double> noise;
  std::vector<int64_t> correct;
};

}  // namespace

GridResult run_layerwise_grid(const Executor& exec, const Dataset& eval, const Normalization& norm, int64_t count,
                              const ActivationRanges& ranges, const Config& cfg, const GridOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  const Graph& g = exec.graph();
  const size_t L = g.layers.size(), B = cfg.weight_bits.size(), cells = L * B;
  count = std::min(count, eval.count);
  const int64_t bs = opt.batch_size;
  const int64_t batches = (count + bs - 1) / bs;

  // Weights are quantized once per (layer, bits), never per batch.
  std::vector<Tensor> weights(cells);
  std::vector<LayerQuantization> quant(cells);
  for (size_t l = 0; l < L; ++l) {
    for (size_t b = 0; b < B; ++b) {
      weights[l * B + b] = quantize_weights(g, g.layers[l], cfg.weight_bits[b], cfg.scheme, cfg.granularity);
      quant[l * B + b] = make_layer_quantization(g.layers[l], &weights[l * B + b], ranges, cfg);
    }
  }

  std::vector<BatchSums> sums(batches);
  for (auto& s : sums) {
    s.noise.assign(cells, 0.0);
    s.correct.assign(cells, 0);
  }
  Progress progress(opt.naive ? "grid, naive" : "grid", opt.naive ? count * static_cast<int64_t>(cells) : count,
                    opt.naive ? 1 : static_cast<int64_t>(cells), opt.progress);

  if (!opt.naive) {
#pragma omp parallel num_threads(opt.threads)
    {
      auto ws = exec.make_workspace();
      Tensor x;
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < batches; ++i) {
        const int64_t begin = i * bs, n = std::min(bs, count - begin);
        const int32_t* labels = eval.labels.data() + begin;
        load_batch(eval, norm, begin, n, x);
        const Tensor& y = exec.forward(ws, x);  // float32, every value kept in ws.values
        const size_t classes = static_cast<size_t>(y.numel() / n);
        BatchSums& s = sums[i];
        s.float_correct = count_top1(y.ptr(), labels, n, classes);
        s.energy = squared_norm_sum(y.ptr(), n, classes);
        for (size_t c = 0; c < cells; ++c) {
          const Tensor& yq = exec.suffix_forward(ws, static_cast<int>(c / B), quant[c]);
          s.noise[c] = squared_error_sum(y.ptr(), yq.ptr(), n, classes);
          s.correct[c] = count_top1(yq.ptr(), labels, n, classes);
        }
        progress.add_images(n);
      }
    }
  } else {
    // Float32 reference logits first (one pass), then every cell re-decodes and re-runs
    // the whole network on every batch, the way a per-configuration script does.
    std::vector<Tensor> reference(batches);
#pragma omp parallel num_threads(opt.threads)
    {
      auto ws = exec.make_workspace();
      Tensor x;
#pragma omp for schedule(dynamic, 1)
      for (int64_t i = 0; i < batches; ++i) {
        const int64_t begin = i * bs, n = std::min(bs, count - begin);
        load_batch(eval, norm, begin, n, x);
        reference[i] = exec.forward(ws, x);
        const size_t classes = static_cast<size_t>(reference[i].numel() / n);
        sums[i].float_correct = count_top1(reference[i].ptr(), eval.labels.data() + begin, n, classes);
        sums[i].energy = squared_norm_sum(reference[i].ptr(), n, classes);
      }
    }
    for (size_t c = 0; c < cells; ++c) {
      QuantPlan plan(L, nullptr);
      plan[c / B] = &quant[c];
#pragma omp parallel num_threads(opt.threads)
      {
        auto ws = exec.make_workspace();
        Tensor x;
#pragma omp for schedule(dynamic, 1)
        for (int64_t i = 0; i < batches; ++i) {
          const int64_t begin = i * bs, n = std::min(bs, count - begin);
          load_batch(eval, norm, begin, n, x);
          const Tensor& yq = exec.forward(ws, x, &plan);
          const Tensor& y = reference[i];
          const size_t classes = static_cast<size_t>(y.numel() / n);
          sums[i].noise[c] = squared_error_sum(y.ptr(), yq.ptr(), n, classes);
          sums[i].correct[c] = count_top1(yq.ptr(), eval.labels.data() + begin, n, classes);
          progress.add_images(n);
        }
      }
    }
  }
  progress.finish();

  GridResult r;
  r.images = count;
  r.weight_bits = cfg.weight_bits;
  r.naive = opt.naive;
  r.cells.resize(cells);
  for (size_t c = 0; c < cells; ++c) {
    r.cells[c].layer = static_cast<int>(c / B);
    r.cells[c].weight_bits = cfg.weight_bits[c % B];
  }
  for (const BatchSums& s : sums) {  // batch order
    r.float_correct += s.float_correct;
    r.output_energy += s.energy;
    for (size_t c = 0; c < cells; ++c) {
      r.cells[c].noise_sum += s.noise[c];
      r.cells[c].correct += s.correct[c];
    }
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace qsweep
