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

// Top-1 per image of a batch into `flags` (offset begin) and the count.
int64_t record_top1(const Tensor& y, const int32_t* labels, int64_t n, uint8_t* flags) {
  const size_t k = static_cast<size_t>(y.numel() / n);
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    flags[i] = static_cast<int32_t>(argmax(y.ptr() + i * k, k)) == labels[i];
    correct += flags[i];
  }
  return correct;
}

GridResult collect(const std::vector<BatchSums>& sums, std::vector<CellStats> cells, std::vector<uint8_t> float_images,
                   int64_t count) {
  GridResult r;
  r.images = count;
  r.float_correct_images = std::move(float_images);
  r.cells = std::move(cells);
  for (const BatchSums& s : sums) {  // batch order
    r.float_correct += s.float_correct;
    r.output_energy += s.energy;
    for (size_t c = 0; c < r.cells.size(); ++c) {
      r.cells[c].noise_sum += s.noise[c];
      r.cells[c].correct += s.correct[c];
    }
  }
  return r;
}

std::vector<BatchSums> make_sums(int64_t batches, size_t cells) {
  std::vector<BatchSums> sums(batches);
  for (auto& s : sums) {
    s.noise.assign(cells, 0.0);
    s.correct.assign(cells, 0);
  }
  return sums;
}

}  // namespace

std::unique_ptr<QuantizedLayer> quantize_layer(const Executor& exec, int layer, const QuantSpec& spec, int bits,
                                               const ActivationRanges& ranges, const BiasCorrectionSource* bc,
                                               int64_t batch_size, int threads) {
  const Graph& g = exec.graph();
  auto ql = std::make_unique<QuantizedLayer>();
  ql->layer = layer;
  ql->bits = bits;
  ql->weights = quantize_weights(g, g.layers[layer], spec, bits);
  ql->q = make_layer_quantization(g.layers[layer], nullptr, ranges, spec);
  ql->finalize();
  if (bc != nullptr) {
    ql->bias = bias_correction(exec, layer, ql->q, *bc->data, bc->norm, bc->count, batch_size, threads);
    ql->corrected_bias = true;
    ql->finalize();
  }
  return ql;
}

GridResult run_layerwise_grid(const Executor& exec, const Dataset& eval, const Normalization& norm, int64_t count,
                              const ActivationRanges& ranges, const std::vector<QuantSpec>& specs,
                              const std::vector<int>& weight_bits, const GridOptions& opt,
                              const BiasCorrectionSource* bc) {
  const auto t0 = std::chrono::steady_clock::now();
  const Graph& g = exec.graph();
  const size_t L = g.layers.size(), B = weight_bits.size(), ncells = L * B;
  count = std::min(count, eval.count);
  const int64_t bs = opt.batch_size;
  const int64_t batches = (count + bs - 1) / bs;

  // Weights are quantized once per (layer, bits), never per batch.
  std::vector<std::unique_ptr<QuantizedLayer>> quant(ncells);
  std::vector<CellStats> cells(ncells);
  for (size_t l = 0; l < L; ++l) {
    for (size_t b = 0; b < B; ++b) {
      quant[l * B + b] = quantize_layer(exec, static_cast<int>(l), specs[l], weight_bits[b], ranges, bc, bs, opt.threads);
      cells[l * B + b].layer = static_cast<int>(l);
      cells[l * B + b].weight_bits = weight_bits[b];
      cells[l * B + b].correct_images.assign(count, 0);
    }
  }
  std::vector<uint8_t> float_images(count, 0);
  auto sums = make_sums(batches, ncells);
  Progress progress(opt.naive ? "grid, naive" : "grid", opt.naive ? count * static_cast<int64_t>(ncells) : count,
                    opt.naive ? 1 : static_cast<int64_t>(ncells), opt.progress);

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
        s.float_correct = record_top1(y, labels, n, float_images.data() + begin);
        s.energy = squared_norm_sum(y.ptr(), n, classes);
        for (size_t c = 0; c < ncells; ++c) {
          const Tensor& yq = exec.suffix_forward(ws, static_cast<int>(c / B), quant[c]->q);
          s.noise[c] = squared_error_sum(y.ptr(), yq.ptr(), n, classes);
          s.correct[c] = record_top1(yq, labels, n, cells[c].correct_images.data() + begin);
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
        sums[i].float_correct = record_top1(reference[i], eval.labels.data() + begin, n, float_images.data() + begin);
        sums[i].energy = squared_norm_sum(reference[i].ptr(), n, reference[i].numel() / n);
      }
    }
    for (size_t c = 0; c < ncells; ++c) {
      QuantPlan plan(L, nullptr);
      plan[c / B] = &quant[c]->q;
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
          sums[i].noise[c] = squared_error_sum(y.ptr(), yq.ptr(), n, y.numel() / n);
          sums[i].correct[c] = record_top1(yq, eval.labels.data() + begin, n, cells[c].correct_images.data() + begin);
          progress.add_images(n);
        }
      }
    }
  }
  progress.finish();
  GridResult r = collect(sums, std::move(cells), std::move(float_images), count);
  r.weight_bits = weight_bits;
  r.naive = opt.naive;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

GridResult run_network_plans(const Executor& exec, const Dataset& eval, const Normalization& norm, int64_t count,
                             const std::vector<QuantPlan>& plans, const GridOptions& opt, const char* label) {
  const auto t0 = std::chrono::steady_clock::now();
  count = std::min(count, eval.count);
  const int64_t bs = opt.batch_size;
  const int64_t batches = (count + bs - 1) / bs;
  const size_t P = plans.size();
  std::vector<CellStats> cells(P);
  for (auto& c : cells) c.correct_images.assign(count, 0);
  std::vector<uint8_t> float_images(count, 0);
  auto sums = make_sums(batches, P);
  Progress progress(label, count, static_cast<int64_t>(P), opt.progress);
#pragma omp parallel num_threads(opt.threads)
  {
    auto ws = exec.make_workspace();
    Tensor x, y;
#pragma omp for schedule(dynamic, 1)
    for (int64_t i = 0; i < batches; ++i) {
      const int64_t begin = i * bs, n = std::min(bs, count - begin);
      const int32_t* labels = eval.labels.data() + begin;
      load_batch(eval, norm, begin, n, x);
      y = exec.forward(ws, x);
      const size_t classes = static_cast<size_t>(y.numel() / n);
      BatchSums& s = sums[i];
      s.float_correct = record_top1(y, labels, n, float_images.data() + begin);
      s.energy = squared_norm_sum(y.ptr(), n, classes);
      for (size_t p = 0; p < P; ++p) {
        const Tensor& yq = exec.forward(ws, x, &plans[p]);
        s.noise[p] = squared_error_sum(y.ptr(), yq.ptr(), n, classes);
        s.correct[p] = record_top1(yq, labels, n, cells[p].correct_images.data() + begin);
      }
      progress.add_images(n);
    }
  }
  progress.finish();
  GridResult r = collect(sums, std::move(cells), std::move(float_images), count);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace qsweep
