#include "experiments/run.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ctime>

#include <fmt/format.h>
#include <google/protobuf/stubs/common.h>
#include <nlohmann/json.hpp>
#include <omp.h>
#include <toml++/toml.h>
#include <unistd.h>

#include "experiments/results.h"
#include "experiments/stats.h"
#include "experiments/studies.h"
#include "qsweep_version.h"
#include "runtime/error.h"
#include "runtime/onnx_import.h"
#include "runtime/sha256.h"

namespace qsweep {

using nlohmann::json;

namespace {

std::string utc_now() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Doubles in JSON: non-finite values (an SQNR of +inf) become null.
json num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

std::string fmt_sqnr(double v) { return std::isfinite(v) ? fmt::format("{:.4f}", v) : "inf"; }
std::string fmt_ci(double v) { return std::isfinite(v) ? fmt::format("{:.4f}", v) : ""; }

json dataset_json(const Dataset& d, int64_t used) {
  return {{"split", d.name},
          {"images_path", d.images_path},
          {"labels_path", d.labels_path},
          {"images_sha256", sha256_file(d.images_path)},
          {"labels_sha256", sha256_file(d.labels_path)},
          {"images_in_split", d.count},
          {"images_used", used}};
}

// Layers ordered worst first at one bit-width (degradation, then noise, then index).
std::vector<const CellStats*> worst_at(const GridResult& r, int bits) {
  std::vector<const CellStats*> v;
  for (const auto& c : r.cells) {
    if (c.weight_bits == bits) v.push_back(&c);
  }
  std::stable_sort(v.begin(), v.end(), [&](const CellStats* a, const CellStats* b) {
    if (r.degradation(*a) != r.degradation(*b)) return r.degradation(*a) > r.degradation(*b);
    if (a->noise_sum != b->noise_sum) return a->noise_sum > b->noise_sum;
    return a->layer < b->layer;
  });
  return v;
}

}  // namespace

std::string layerwise_csv(const Graph& g, const GridResult& r, const std::vector<QuantSpec>& specs,
                          const PairedBootstrap& boot) {
  std::string s =
      "layer_index,layer_name,op_type,weight_bits,act_bits,noise,sqnr_db,top1,degradation,correct,images,float_top1,"
      "ci_low,ci_high\n";
  for (const auto& c : r.cells) {
    const Layer& L = g.layers[c.layer];
    std::string name = L.name;
    if (name.find_first_of(",\"\n") != std::string::npos) {
      std::string q = "\"";
      for (char ch : name) q += ch == '"' ? std::string("\"\"") : std::string(1, ch);
      name = q + "\"";
    }
    const Interval ci = boot.degradation_interval(r.float_correct_images, c.correct_images);
    s += fmt::format("{},{},{},{},{},{:.9g},{},{:.4f},{:.4f},{},{},{:.4f},{},{}\n", c.layer, name,
                     op_name(g.nodes[L.node].op), c.weight_bits, specs[c.layer].act_bits, r.noise(c),
                     fmt_sqnr(r.sqnr_db(c)), r.top1(c), r.degradation(c), c.correct, r.images, r.float_top1(),
                     fmt_ci(ci.lo), fmt_ci(ci.hi));
  }
  return s;
}

RunOutcome run_experiment(const RunOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string started = utc_now();
  std::vector<std::string> overrides = o.overrides;
  if (!o.backend.empty()) overrides.push_back(fmt::format("run.backend=\"{}\"", o.backend));
  if (o.naive) overrides.push_back("run.naive=true");
  Config cfg = load_config(o.config_path, overrides);
  if (!o.out_root.empty()) cfg.root = o.out_root;
  const bool verbose = !o.quiet;
  auto say = [&](const std::string& s) {
    if (verbose) fmt::print(stderr, "{}\n", s);
  };

  Graph g = import_onnx(cfg.model_path);
  if (g.layers.empty()) user_error("{}: the model has no Conv, Gemm or MatMul layer to quantize", cfg.model_path);
  // Layer selectors are checked before any work is done.
  std::vector<QuantSpec> specs = resolve_layer_specs(g, cfg.quant);
  for (const auto& v : cfg.variants) resolve_layer_specs(g, v.quant);
  if (cfg.kind != "full" && cfg.quant.equalization) {
    const int pairs = equalize_cross_layer(g);
    say(fmt::format("cross-layer equalization: {} Conv -> Conv pairs equalized", pairs));
  }
  const auto backend = make_backend(cfg.backend);
  const Executor exec(g, *backend);
  const Dataset calib = load_idx_split(cfg.data_path, cfg.calibration_split);
  const Dataset eval = cfg.eval_split == cfg.calibration_split ? calib : load_idx_split(cfg.data_path, cfg.eval_split);
  if (static_cast<int64_t>(cfg.mean.size()) != eval.channels) {
    user_error("{}: data.mean and data.std have {} values; the images have {} channel(s)", cfg.source, cfg.mean.size(),
               eval.channels);
  }
  const Shape sample{eval.channels, eval.height, eval.width};
  if (g.input_shape != sample) {
    user_error("{}: the model expects inputs of shape {} per image; the dataset in '{}' has {}", cfg.model_path,
               shape_str(g.input_shape), cfg.data_path, shape_str(sample));
  }
  const Normalization norm{cfg.mean, cfg.std};
  const int threads = cfg.threads > 0 ? cfg.threads : omp_get_num_procs();
  const int64_t eval_count = cfg.eval_count > 0 ? std::min(cfg.eval_count, eval.count) : eval.count;
  const int64_t calib_count = std::min(cfg.calibration_count, calib.count);

  say(fmt::format("qsweep {} ({}): {} layers on {} {} images ({}), backend {} ({} threads)", cfg.name, cfg.kind,
                  g.layers.size(), eval_count, cfg.eval_split, cfg.dataset, backend->name(), threads));
  say(fmt::format("calibrating activation ranges on the first {} {} images", calib_count, cfg.calibration_split));
  const ActivationRanges ranges = calibrate(exec, calib, norm, calib_count, cfg.batch_size, threads);

  StudyContext ctx;
  ctx.exec = &exec;
  ctx.calib = &calib;
  ctx.eval = &eval;
  ctx.norm = norm;
  ctx.calib_count = calib_count;
  ctx.eval_count = eval_count;
  ctx.ranges = &ranges;
  ctx.options.batch_size = cfg.batch_size;
  ctx.options.threads = threads;
  ctx.options.naive = cfg.naive;
  ctx.options.progress = verbose;
  const PairedBootstrap boot(static_cast<size_t>(eval_count), cfg.bootstrap, cfg.stats_seed, cfg.confidence);
  const BiasCorrectionSource bc{&calib, norm, calib_count};

  json summary;
  summary["experiment"] = cfg.name;
  summary["kind"] = cfg.kind;
  summary["mode"] = cfg.naive ? "naive" : "one-pass";
  summary["images"] = eval_count;
  summary["act_bits"] = cfg.quant.base.act_bits;
  summary["scheme"] = scheme_name(cfg.quant.base.scheme);
  summary["granularity"] = granularity_name(cfg.quant.base.granularity);
  summary["weight_clip"] = clip_name(cfg.quant.base.clip);
  summary["confidence"] = cfg.confidence;
  json layers = json::array();
  for (const Layer& L : g.layers) {
    layers.push_back({{"index", L.index},
                      {"name", L.name},
                      {"op_type", op_name(g.nodes[L.node].op)},
                      {"activation", L.act_node >= 0 ? std::string(op_name(g.nodes[L.act_node].op)) : ""},
                      {"weight_shape", g.constant(L.weight_value).shape}});
  }
  summary["layers"] = layers;

  ResultsFolder folder(cfg.root, cfg.name);
  folder.write("config.toml", config_to_toml(cfg));
  GridResult grid;
  int stats_bits = *std::min_element(cfg.quant.weight_bits.begin(), cfg.quant.weight_bits.end());
  auto grid_json = [&](const GridResult& gr) {
    summary["float_top1"] = gr.float_top1();
    summary["float_correct"] = gr.float_correct;
    summary["weight_bits"] = gr.weight_bits;
    json cells = json::array();
    for (const auto& c : gr.cells) {
      const Interval ci = boot.degradation_interval(gr.float_correct_images, c.correct_images);
      cells.push_back({{"layer_index", c.layer},
                       {"layer_name", g.layers[c.layer].name},
                       {"weight_bits", c.weight_bits},
                       {"noise", gr.noise(c)},
                       {"sqnr_db", num(gr.sqnr_db(c))},
                       {"top1", gr.top1(c)},
                       {"degradation", gr.degradation(c)},
                       {"ci_low", num(ci.lo)},
                       {"ci_high", num(ci.hi)},
                       {"correct", c.correct}});
    }
    summary["grid"] = cells;
    json worst = json::object();
    for (int b : gr.weight_bits) {
      json list = json::array();
      auto w = worst_at(gr, b);
      for (size_t i = 0; i < w.size() && i < static_cast<size_t>(cfg.worst); ++i) {
        list.push_back({{"layer_index", w[i]->layer},
                        {"layer_name", g.layers[w[i]->layer].name},
                        {"degradation", gr.degradation(*w[i])},
                        {"noise", gr.noise(*w[i])}});
      }
      worst[std::to_string(b)] = list;
    }
    summary["worst_layers"] = worst;
    summary["grid_seconds"] = gr.seconds;
    folder.write("layerwise.csv", layerwise_csv(g, gr, specs, boot));
  };

  if (cfg.kind == "layerwise") {
    grid = run_layerwise_grid(exec, eval, norm, eval_count, ranges, specs, cfg.quant.weight_bits, ctx.options,
                              cfg.quant.bias_correction ? &bc : nullptr);
    grid_json(grid);
  } else if (cfg.kind == "additivity") {
    AdditivityResult a = run_additivity(ctx, cfg, boot);
    grid = std::move(a.grid);
    grid_json(grid);
    stats_bits = cfg.low_bits;
    folder.write("additivity.csv", additivity_csv(a, cfg));
    summary["additivity"] = {{"configs", a.rows.size()},
                             {"low_bits", cfg.low_bits},
                             {"high_bits", cfg.high_bits},
                             {"seed", cfg.additivity_seed},
                             {"degradation", {{"pearson_r", num(a.r_degradation)}, {"slope", num(a.slope_degradation)}}},
                             {"noise", {{"pearson_r", num(a.r_noise)}, {"slope", num(a.slope_noise)}}}};
    if (verbose) {
      fmt::print("additivity over {} configurations ({}-bit subsets, others {}): degradation r = {:.3f}, slope = {:.3f}; "
                 "noise r = {:.3f}, slope = {:.3f}\n",
                 a.rows.size(), cfg.low_bits, cfg.high_bits ? fmt::format("{}-bit", cfg.high_bits) : "float32",
                 a.r_degradation, a.slope_degradation, a.r_noise, a.slope_noise);
    }
  } else {  // full
    ComparisonResult c = run_comparison(ctx, cfg, boot);
    summary["float_top1"] = c.eval.float_top1();
    summary["float_correct"] = c.eval.float_correct;
    json rows = json::array();
    for (const auto& row : c.rows) {
      rows.push_back({{"variant", row.name},
                      {"description", row.description},
                      {"top1", row.top1},
                      {"degradation", row.degradation},
                      {"noise", row.noise},
                      {"ci_low", num(row.ci.lo)},
                      {"ci_high", num(row.ci.hi)}});
    }
    summary["comparison"] = rows;
    folder.write("comparison.csv", comparison_csv(c));
    stats_bits = cfg.quant.base.weight_bits;
    grid.images = c.eval.images;
    grid.float_correct = c.eval.float_correct;
    if (verbose) {
      fmt::print("float32 top-1: {:.2f}% on {} images\n", c.eval.float_top1(), c.eval.images);
      for (const auto& row : c.rows) {
        fmt::print("  {:<24} top-1 {:6.2f}%  degradation {:+6.2f} pts [{}, {}]  noise {:.4g}\n", row.name, row.top1,
                   row.degradation, fmt_ci(row.ci.lo), fmt_ci(row.ci.hi), row.noise);
      }
    }
  }
  folder.write("layers.csv", layers_csv(g, specs, stats_bits));
  folder.write("summary.json", summary.dump(2) + "\n");

  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  json manifest;
  manifest["qsweep_version"] = QSWEEP_VERSION;
  manifest["git_commit"] = QSWEEP_GIT_COMMIT;
  manifest["command_line"] = o.command_line;
  manifest["config_file"] = cfg.source;
  manifest["overrides"] = o.overrides;
  manifest["started_utc"] = started;
  manifest["finished_utc"] = utc_now();
  manifest["wall_seconds"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  manifest["host"] = host;
  manifest["model"] = {{"path", cfg.model_path},
                       {"sha256", sha256_file(cfg.model_path)},
                       {"opset", g.opset},
                       {"layers", g.layers.size()},
                       {"nodes", g.nodes.size()}};
  manifest["dataset"] = {{"name", cfg.dataset},
                         {"path", cfg.data_path},
                         {"eval", dataset_json(eval, eval_count)},
                         {"calibration", dataset_json(calib, calib_count)}};
  manifest["backend"] = {{"name", backend->name()}, {"device", backend->device_name()}, {"threads", threads}};
  manifest["libraries"] = {{"backend", backend->library_versions()},
                           {"protobuf", google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION)},
                           {"tomlplusplus", fmt::format("{}.{}.{}", TOML_LIB_MAJOR, TOML_LIB_MINOR, TOML_LIB_PATCH)},
                           {"fmt", FMT_VERSION},
                           {"nlohmann_json", fmt::format("{}.{}.{}", NLOHMANN_JSON_VERSION_MAJOR,
                                                         NLOHMANN_JSON_VERSION_MINOR, NLOHMANN_JSON_VERSION_PATCH)},
                           {"compiler", __VERSION__}};
  folder.write("manifest.json", manifest.dump(2) + "\n");

  RunOutcome out;
  out.folder = folder.commit();
  out.config = cfg;
  for (const Layer& L : g.layers) out.layer_names.push_back(L.name);

  if (verbose && !grid.cells.empty()) {
    fmt::print("float32 top-1: {:.2f}% on {} images; grid of {} cells in {}\n", grid.float_top1(), grid.images,
               grid.cells.size(), fmt::format("{:.1f} s", grid.seconds));
    const auto [lowest, highest] = std::minmax_element(grid.weight_bits.begin(), grid.weight_bits.end());
    for (int b : {*lowest, *highest}) {
      fmt::print("worst layers at {}-bit weights:\n", b);
      auto w = worst_at(grid, b);
      for (size_t i = 0; i < w.size() && i < static_cast<size_t>(cfg.worst); ++i) {
        fmt::print("  {:>3} {:<40} degradation {:+7.2f} pts  noise {:.4g}  SQNR {} dB\n", w[i]->layer,
                   g.layers[w[i]->layer].name, grid.degradation(*w[i]), grid.noise(*w[i]), fmt_sqnr(grid.sqnr_db(*w[i])));
      }
      if (grid.weight_bits.size() == 1) break;
    }
  }
  if (verbose) fmt::print("results: {}\n", out.folder.string());
  out.grid = std::move(grid);
  return out;
}

}  // namespace qsweep
