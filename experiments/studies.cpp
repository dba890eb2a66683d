#include "experiments/studies.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <set>

#include <fmt/format.h>

#include "experiments/results.h"
#include "runtime/error.h"

namespace qsweep {

std::vector<std::vector<int>> additivity_subsets(int layers, int configs, uint64_t seed) {
  // Sizes spread from 1 to every layer, each size used at most as often as it has distinct
  // subsets (C(layers, size)): the excess goes to the nearest size with subsets to spare, so no
  // configuration is measured twice (10 layers and 20 configurations used to draw "all 10
  // layers" twice). More configurations than non-empty subsets: the rest are left out.
  std::vector<int64_t> count(layers + 1, 0), cap(layers + 1, 0);
  for (int s = 0; s <= layers; ++s) {
    double c = 1.0;  // C(layers, s), saturated: only whether it exceeds a count matters
    for (int i = 0; i < s; ++i) c = c * (layers - i) / (i + 1);
    cap[s] = s == 0 ? 0 : static_cast<int64_t>(std::min(c, 1e15) + 0.5);
  }
  for (int k = 0; k < configs; ++k) {
    ++count[configs == 1 ? layers : 1 + static_cast<int>(std::lround(static_cast<double>(layers - 1) * k / (configs - 1)))];
  }
  for (int s = 1; s <= layers; ++s) {
    for (int d = 1; count[s] > cap[s] && d <= layers; ++d) {
      for (const int t : {s - d, s + d}) {
        if (t < 1 || t > layers) continue;
        const int64_t move = std::min(count[s] - cap[s], cap[t] - count[t]);
        if (move > 0) count[t] += move, count[s] -= move;
      }
    }
    count[s] = std::min(count[s], cap[s]);
  }
  std::mt19937_64 rng(seed);
  std::set<std::vector<int>> drawn;
  std::vector<std::vector<int>> out;
  for (int size = 1; size <= layers; ++size) {
    for (int64_t n = 0; n < count[size]; ++n) {
      std::vector<int> idx;
      do {  // a subset not drawn yet exists (count <= cap): drawn again until found
        idx.resize(layers);
        std::iota(idx.begin(), idx.end(), 0);
        std::shuffle(idx.begin(), idx.end(), rng);
        idx.resize(size);
        std::sort(idx.begin(), idx.end());
      } while (drawn.count(idx));
      drawn.insert(idx);
      out.push_back(std::move(idx));
    }
  }
  return out;
}

namespace {

BiasCorrectionSource bias_source(const StudyContext& ctx) {
  return BiasCorrectionSource{ctx.calib, ctx.norm, ctx.calib_count};
}

}  // namespace

AdditivityResult run_additivity(const StudyContext& ctx, const Config& cfg, const PairedBootstrap& boot) {
  const Executor& exec = *ctx.exec;
  const Graph& g = exec.graph();
  const int L = static_cast<int>(g.layers.size());
  const std::vector<QuantSpec> specs = resolve_layer_specs(g, cfg.quant);
  std::vector<int> bits{cfg.low_bits};
  if (cfg.high_bits != 0 && cfg.high_bits != cfg.low_bits) bits.push_back(cfg.high_bits);
  const BiasCorrectionSource bc = bias_source(ctx);
  const BiasCorrectionSource* bcp = cfg.quant.bias_correction ? &bc : nullptr;

  AdditivityResult r;
  GridOptions grid_options = ctx.options;
  grid_options.store = cfg.naive ? nullptr : ctx.grid_store;  // the naive grid keeps no records
  r.grid = run_layerwise_grid(exec, *ctx.eval, ctx.norm, ctx.eval_count, *ctx.ranges, specs, bits, grid_options, bcp);
  auto cell = [&](int layer, int b) -> const CellStats* {
    if (b == 0) return nullptr;  // float32: contributes nothing
    const size_t bi = std::find(bits.begin(), bits.end(), b) - bits.begin();
    return &r.grid.cells[layer * bits.size() + bi];
  };

  // Quantized layers at both bit-widths, shared by every configuration.
  std::vector<std::pair<int, int>> layer_bits;
  for (int l = 0; l < L; ++l) layer_bits.emplace_back(l, cfg.low_bits);
  if (cfg.high_bits != 0) {
    for (int l = 0; l < L; ++l) layer_bits.emplace_back(l, cfg.high_bits);
  }
  std::vector<std::unique_ptr<QuantizedLayer>> made =
      quantize_layers(exec, layer_bits, specs, *ctx.ranges, bcp, ctx.options.batch_size, ctx.options.threads,
                      ctx.options.stop);
  std::vector<std::unique_ptr<QuantizedLayer>> low(L), high(L);
  for (int l = 0; l < L; ++l) {
    low[l] = std::move(made[l]);
    if (cfg.high_bits != 0) high[l] = std::move(made[L + l]);
  }
  const auto subsets = additivity_subsets(L, cfg.additivity_configs, cfg.additivity_seed);
  if (static_cast<int>(subsets.size()) < cfg.additivity_configs && ctx.options.progress) {
    eprint("note: additivity.configs = {}, but {} layers have {} distinct non-empty subsets: each is "
           "measured once\n", cfg.additivity_configs, L, subsets.size());
  }
  std::vector<QuantPlan> plans;
  for (const auto& s : subsets) {
    QuantPlan plan(L, nullptr);
    for (int l = 0; l < L; ++l) plan[l] = high[l] ? &high[l]->q : nullptr;
    for (int l : s) plan[l] = &low[l]->q;
    plans.push_back(std::move(plan));
  }
  GridOptions plan_options = ctx.options;
  plan_options.store = ctx.plan_store;
  const GridResult measured = run_network_plans(exec, *ctx.eval, ctx.norm, ctx.eval_count, plans, plan_options, "additivity");

  std::vector<double> pd, md, pn, mn;
  for (size_t k = 0; k < subsets.size(); ++k) {
    AdditivityRow row;
    row.low_layers = subsets[k];
    int64_t lost = 0;
    for (int l = 0; l < L; ++l) {
      const bool is_low = std::binary_search(subsets[k].begin(), subsets[k].end(), l);
      const CellStats* c = cell(l, is_low ? cfg.low_bits : cfg.high_bits);
      if (c == nullptr) continue;
      // Summed as image counts, so that contributions that cancel cancel exactly.
      lost += r.grid.float_correct - c->correct;
      row.predicted_noise += r.grid.noise(*c);
    }
    row.predicted_degradation = 100.0 * static_cast<double>(lost) / static_cast<double>(r.grid.images);
    const CellStats& m = measured.cells[k];
    row.measured_degradation = measured.degradation(m);
    row.measured_noise = measured.noise(m);
    row.measured_top1 = measured.top1(m);
    row.measured_top5 = measured.top5(m);
    row.ci = boot.degradation_interval(measured.float_correct_images, m.correct_images);
    pd.push_back(row.predicted_degradation);
    md.push_back(row.measured_degradation);
    pn.push_back(row.predicted_noise);
    mn.push_back(row.measured_noise);
    r.rows.push_back(std::move(row));
  }
  r.r_degradation = pearson_r(pd, md);
  r.slope_degradation = ls_slope(pd, md);
  r.r_noise = pearson_r(pn, mn);
  r.slope_noise = ls_slope(pn, mn);
  return r;
}

ComparisonResult run_comparison(const StudyContext& ctx, const Config& cfg, const PairedBootstrap& boot) {
  const Executor& exec = *ctx.exec;
  const int L = static_cast<int>(exec.graph().layers.size());
  std::vector<Variant> variants = cfg.variants;
  if (variants.empty()) variants.push_back(Variant{"base", "the [quant] settings", cfg.quant});
  const BiasCorrectionSource bc = bias_source(ctx);

  // Everything a variant's plan points to lives here until the evaluation is done.
  std::vector<std::unique_ptr<Graph>> graphs;
  std::vector<std::unique_ptr<Executor>> execs;
  std::vector<std::unique_ptr<ActivationRanges>> ranges;
  std::vector<std::vector<std::unique_ptr<QuantizedLayer>>> layers(variants.size());
  std::vector<QuantPlan> plans;
  ComparisonResult r;
  r.layers_csv = variant_layers_header();
  for (size_t v = 0; v < variants.size(); ++v) {
    const QuantConfig& q = variants[v].quant;
    const Executor* ve = &exec;
    const ActivationRanges* vr = ctx.ranges;
    if (q.equalization) {
      // Equalization changes constants only: the plan overrides every layer's weights and
      // bias on the original network, with ranges calibrated on the equalized one.
      graphs.push_back(std::make_unique<Graph>(exec.graph()));
      equalize_cross_layer(*graphs.back());
      execs.push_back(std::make_unique<Executor>(*graphs.back(), exec.backend()));
      ve = execs.back().get();
      ranges.push_back(std::make_unique<ActivationRanges>(
          calibrate(*ve, *ctx.calib, ctx.norm, ctx.calib_count, ctx.options.batch_size, ctx.options.threads)));
      vr = ranges.back().get();
    }
    const std::vector<QuantSpec> specs = resolve_layer_specs(ve->graph(), q);
    r.layers_csv += variant_layers_rows(variants[v].name, ve->graph(), specs);
    QuantPlan plan(L, nullptr);
    std::vector<std::pair<int, int>> layer_bits;
    for (int l = 0; l < L; ++l) layer_bits.emplace_back(l, specs[l].weight_bits);
    std::vector<std::unique_ptr<QuantizedLayer>> made = quantize_layers(
        *ve, layer_bits, specs, *vr, q.bias_correction ? &bc : nullptr, ctx.options.batch_size, ctx.options.threads,
        ctx.options.stop);
    for (int l = 0; l < L; ++l) {
      auto ql = std::move(made[l]);
      const Layer& layer = ve->graph().layers[l];
      if (q.equalization && !ql->corrected_bias && layer.bias_value >= 0) {
        ql->bias = ve->graph().constant(layer.bias_value);
        ql->corrected_bias = true;
        ql->finalize();
      }
      plan[l] = &ql->q;
      layers[v].push_back(std::move(ql));
    }
    plans.push_back(std::move(plan));
  }
  GridOptions plan_options = ctx.options;
  plan_options.store = ctx.plan_store;
  r.eval = run_network_plans(exec, *ctx.eval, ctx.norm, ctx.eval_count, plans, plan_options, "full");
  for (size_t v = 0; v < variants.size(); ++v) {
    const CellStats& c = r.eval.cells[v];
    VariantRow row;
    row.name = variants[v].name;
    row.description = variants[v].description;
    row.top1 = r.eval.top1(c);
    row.degradation = r.eval.degradation(c);
    row.noise = r.eval.noise(c);
    row.top5 = r.eval.top5(c);
    row.top5_degradation = r.eval.top5_degradation(c);
    row.ci = boot.degradation_interval(r.eval.float_correct_images, c.correct_images);
    row.ci5 = boot.degradation_interval(r.eval.float_correct_images, c.correct_images, kTop5Bit);
    r.rows.push_back(std::move(row));
  }
  return r;
}

namespace {

std::string ci_str(double v) { return std::isfinite(v) ? fmt::format("{:.4f}", v) : ""; }

}  // namespace

std::string additivity_csv(const AdditivityResult& r, const Config& cfg) {
  std::string s =
      "config_index,low_bits,high_bits,num_low_layers,low_layers,predicted_degradation,measured_degradation,"
      "predicted_noise,measured_noise,measured_top1,ci_low,ci_high,measured_top5\n";
  for (size_t k = 0; k < r.rows.size(); ++k) {
    const auto& row = r.rows[k];
    s += fmt::format("{},{},{},{},{},{:.4f},{:.4f},{:.9g},{:.9g},{:.4f},{},{},{:.4f}\n", k, cfg.low_bits,
                     cfg.high_bits, row.low_layers.size(), fmt::join(row.low_layers, ";"), row.predicted_degradation,
                     row.measured_degradation, row.predicted_noise, row.measured_noise, row.measured_top1,
                     ci_str(row.ci.lo), ci_str(row.ci.hi), row.measured_top5);
  }
  return s;
}

std::string comparison_csv(const ComparisonResult& r) {
  std::string s = "variant,description,top1,degradation,noise,ci_low,ci_high,top5,top5_degradation,top5_ci_low,top5_ci_high\n";
  for (const auto& row : r.rows) {
    s += fmt::format("{},{},{:.4f},{:.4f},{:.9g},{},{},{:.4f},{:.4f},{},{}\n", csv_field(row.name),
                     csv_field(row.description), row.top1, row.degradation, row.noise, ci_str(row.ci.lo),
                     ci_str(row.ci.hi), row.top5, row.top5_degradation, ci_str(row.ci5.lo), ci_str(row.ci5.hi));
  }
  return s;
}

}  // namespace qsweep
