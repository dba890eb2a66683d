// The layer-wise grid three ways in one process, side by side: qsweep's one pass, qsweep's
// naive way (full forward per cell), and the same grid written in PyTorch the way a
// researcher would (bench/torch_grid.py: full network per cell, fake_quantize_per_tensor_affine),
// timed on a sample of cells and extrapolated to the grid. The three run in rounds (--repeat),
// the peer as a fresh process each round; each keeps its fastest round.
//
//   build/bench/qsweep_bench_grid [--config configs/quickstart.toml] [--images N] [--torch-cells K]
//
// It also prints the FLOPs the one pass computes, this CPU's measured FMA peak, and the time
// the arithmetic alone would take at that peak: the floor under any FP32 direct convolution.
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <random>
#include <sstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "bench/bench_util.h"
#include "bench/flops.h"
#include "experiments/config.h"
#include "experiments/layerwise.h"
#include "runtime/backend.h"
#include "runtime/error.h"
#include "runtime/onnx_import.h"

using namespace qsweep;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}


}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qsweep grid benchmark: one-pass vs naive vs PyTorch"};
  std::string config = std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml";
  int64_t images = 0;
  int torch_cells = 6;
  int repeat = 3;
  bool skip_naive = false, skip_torch = false, skip_peak = false, skip_transforms = false;
  std::string python = "/usr/bin/python3";
  std::vector<std::string> sets;
  app.add_option("--config", config, "Config to benchmark (default: the quickstart)");
  app.add_option("--set", sets, "Override a config key, as `qsweep run --set` (e.g. run.conv_transforms=true)");
  app.add_option("--images", images, "Evaluation images (default: the config's, i.e. the full test set)");
  app.add_option("--torch-cells", torch_cells, "Cells the PyTorch peer times (extrapolated to the grid)");
  app.add_option("--python", python, "Python with torch for the peer");
  app.add_option("--repeat", repeat,
                 "Rounds: each round times the one pass, the naive way and the peer (a fresh process) once; each "
                 "way keeps its fastest round. This machine's timings vary from run to run, the peer's by up "
                 "to 2x between processes")
      ->check(CLI::PositiveNumber);
  app.add_flag("--skip-naive", skip_naive, "Do not time the naive way");
  app.add_flag("--skip-torch", skip_torch, "Do not run the PyTorch peer");
  app.add_flag("--skip-peak", skip_peak, "Do not measure this CPU's FMA peak (nor print the arithmetic floor)");
  app.add_flag("--skip-transforms", skip_transforms,
               "When the config leaves run.conv_transforms off: do not also time the one pass with it on (each "
               "round does by default, on CPUs that have the kernels)");
  CLI11_PARSE(app, argc, argv);

  try {
    Config cfg = load_config(config, sets);
    if (images > 0) cfg.eval_count = images;
    const Graph g = import_onnx(cfg.model_path);
    BackendOptions bo;
    bo.transform_convs = cfg.conv_transforms;
    const auto backend = make_backend("cpu", bo);
    const Executor exec(g, *backend);
    const Dataset calib = load_idx_split(cfg.data_path, cfg.calibration_split);
    const Dataset eval = load_idx_split(cfg.data_path, cfg.eval_split);
    const Normalization norm{cfg.mean, cfg.std};
    const int threads = cfg.threads > 0 ? cfg.threads : omp_get_num_procs();
    const int64_t count = cfg.eval_count > 0 ? std::min(cfg.eval_count, eval.count) : eval.count;
    const ActivationRanges ranges = calibrate(exec, calib, norm, cfg.calibration_count, cfg.batch_size, threads);
    // The same one pass with run.conv_transforms on, each round beside the config's own, as a
    // run with the option would do it (its own calibration).
    BackendOptions bo_t = bo;
    bo_t.transform_convs = true;
    const auto backend_t = make_backend("cpu", bo_t);
    const bool also_transforms = !skip_transforms && !backend->conv_transforms() && backend_t->conv_transforms();
    std::optional<Executor> exec_t;
    std::optional<ActivationRanges> ranges_t;
    if (also_transforms) {
      exec_t.emplace(g, *backend_t);
      ranges_t = calibrate(*exec_t, calib, norm, cfg.calibration_count, cfg.batch_size, threads);
    }
    const size_t cells = g.layers.size() * cfg.quant.weight_bits.size();
    fmt::print("model {} | {} layers x {} bit-widths = {} cells | {} images | {} threads | batch {} | best of {}{}\n",
               cfg.model_path, g.layers.size(), cfg.quant.weight_bits.size(), cells, count, threads, cfg.batch_size,
               repeat, backend->conv_transforms() ? " | run.conv_transforms: Winograd and strip convolutions" : "");

    GridOptions o;
    o.batch_size = cfg.batch_size;
    o.threads = threads;
    o.progress = false;
    const auto specs = resolve_layer_specs(g, cfg.quant);
    auto timed = [&](bool naive, GridResult& result) {
      o.naive = naive;
      const auto t0 = std::chrono::steady_clock::now();
      result = run_layerwise_grid(exec, eval, norm, count, ranges, specs, cfg.quant.weight_bits, o);
      return seconds_since(t0);
    };
    GridResult one, naive, one_t;
    double t_one = 1e300, t_naive = 1e300, t_one_t = 1e300;
    std::vector<double> all_one, all_naive, all_one_t;
    // The peer, one process per round (its speed differs from process to process on this
    // machine): the fastest float pass and the fastest time of each sampled cell over the
    // rounds, and each round's own extrapolation for the per-round ratio.
    std::string spec, peer_cmd;
    std::optional<nlohmann::json> peer;  // the last successful round's output: versions, the cells' numbers
    bool peer_failed = false;            // a round in which it did not run: no more rounds of it
    double peer_reference = 1e300;
    std::map<std::string, double> peer_cell_best;  // "layer:bits" -> fastest seconds
    std::vector<double> all_torch, round_ratio, round_ratio_t;
    auto extrapolate = [&](double reference, double cell_seconds_sum, size_t timed_cells) {
      // The float32 reference pass plus every cell's full pass, as the researcher's script runs.
      return reference + cell_seconds_sum / static_cast<double>(timed_cells) * static_cast<double>(cells);
    };
    // Each way `repeat` times, in rounds (one pass, naive, peer), so a slow stretch of the
    // machine hits all of them.
    for (int r = 0; r < repeat; ++r) {
      all_one.push_back(timed(false, one));
      t_one = std::min(t_one, all_one.back());
      if (also_transforms) {
        o.naive = false;
        const auto t0 = std::chrono::steady_clock::now();
        one_t = run_layerwise_grid(*exec_t, eval, norm, count, *ranges_t, specs, cfg.quant.weight_bits, o);
        all_one_t.push_back(seconds_since(t0));
        t_one_t = std::min(t_one_t, all_one_t.back());
      }
      if (!skip_naive) {
        all_naive.push_back(timed(true, naive));
        t_naive = std::min(t_naive, all_naive.back());
      }
      if (skip_torch || peer_failed) continue;
      if (r == 0) {
        spec = bench::sample_cells(one, torch_cells);
        peer_cmd = fmt::format(
            "{} {}/bench/torch_grid.py --onnx '{}' --data '{}' --mean {} --std {} --calibration {} --images {} "
            "--batch {} --threads {} --cells {} --repeat 1 2>&1",
            python, QSWEEP_SOURCE_DIR, cfg.model_path, cfg.data_path, cfg.mean[0], cfg.std[0], cfg.calibration_count,
            count, cfg.batch_size, threads, spec);
      }
      auto out = bench::run_torch_peer(peer_cmd);
      if (!out) {
        peer_failed = true;
        continue;
      }
      peer = std::move(out);
      const nlohmann::json& j = *peer;
      const double reference = j["reference_seconds"];
      peer_reference = std::min(peer_reference, reference);
      double sum = 0.0;
      for (const auto& cell : j["cells"]) {
        const double sec = cell["seconds"];
        const std::string key = fmt::format("{}:{}", cell["layer"].get<int>(), cell["bits"].get<int>());
        const auto it = peer_cell_best.find(key);
        peer_cell_best[key] = it == peer_cell_best.end() ? sec : std::min(it->second, sec);
        sum += sec;
      }
      all_torch.push_back(extrapolate(reference, sum, j["cells"].size()));
      round_ratio.push_back(all_torch.back() / all_one.back());
      if (also_transforms) round_ratio_t.push_back(all_torch.back() / all_one_t.back());
    }
    // The arithmetic: what the one pass computes, and how long it takes at this CPU's peak.
    const std::vector<Shape> shapes = bench::one_image_shapes(g, norm, eval);
    const bench::GridFlops nominal = bench::grid_flops(g, bench::node_flops(g, shapes), cfg.quant.weight_bits.size());
    const bench::GridFlops inside = bench::grid_flops(g, bench::node_flops(g, shapes, true), cfg.quant.weight_bits.size());
    const double peak = skip_peak ? 0.0 : bench::measured_fma_peak(threads);
    double floor_s = 0.0;  // the one pass's inside-the-input FLOPs at the peak
    auto runs = [](const std::vector<double>& v) { return fmt::format("{:.2f}", fmt::join(v, " / ")); };
    fmt::print("one-pass : {:8.2f} s   {:10.0f} images*cells/s   (runs: {} s)\n", t_one, count * cells / t_one,
               runs(all_one));
    // With run.conv_transforms the Winograd convolutions do fewer multiply-adds than these
    // direct-convolution counts: the rate is then an equivalent one, and the floor no bound.
    const bool transforms = backend->conv_transforms();
    fmt::print("           {:.3f} TFLOP in the float forward + suffix forwards ({:.3f} TFLOP counting the taps on zero "
               "padding; a naive grid computes {:.2f}x more): {:.1f} GFLOP/s{}\n",
               count * inside.grid / 1e12, count * nominal.grid / 1e12, nominal.naive / nominal.grid,
               count * inside.grid / t_one / 1e9,
               transforms ? " direct-convolution equivalent (the Winograd convolutions do fewer)" : "");
    if (peak > 0.0) {
      floor_s = count * inside.grid / peak;
      fmt::print("           this CPU's measured FP32 FMA peak on {} threads: {:.1f} GFLOP/s; at it the one pass's "
                 "direct-convolution arithmetic alone takes {:.2f} s, {:.0f}% of the time measured\n",
                 threads, peak / 1e9, floor_s, 100.0 * floor_s / t_one);
    }
    if (also_transforms) {
      // The option changes the rounding: report how far its cells are from the direct ones.
      int64_t max_correct = 0;
      double max_noise = 0.0;
      for (size_t c = 0; c < cells; ++c) {
        max_correct = std::max<int64_t>(max_correct, std::llabs(one_t.cells[c].correct - one.cells[c].correct));
        if (one.cells[c].noise_sum > 0.0) {
          max_noise = std::max(max_noise, std::abs(one_t.cells[c].noise_sum / one.cells[c].noise_sum - 1.0));
        }
      }
      fmt::print("one-pass with run.conv_transforms = true (Winograd and strip convolutions): {:.2f} s   {:.0f} "
                 "images*cells/s   (runs: {} s)   {:.2f}x the direct one pass; its cells differ from the direct ones "
                 "by at most {} images of top-1 and {:.1e} relative noise\n",
                 t_one_t, count * cells / t_one_t, runs(all_one_t), t_one / t_one_t, max_correct, max_noise);
    }
    if (!skip_naive) {
      bool same = naive.float_correct == one.float_correct;
      for (size_t c = 0; c < cells; ++c) {
        same = same && naive.cells[c].noise_sum == one.cells[c].noise_sum && naive.cells[c].correct == one.cells[c].correct;
      }
      fmt::print("naive    : {:8.2f} s   {:10.0f} images*cells/s   (runs: {} s)   one-pass speed-up {:.2f}x   "
                 "identical numbers: {}\n",
                 t_naive, count * cells / t_naive, runs(all_naive), t_naive / t_one, same ? "yes" : "NO");
      if (!same) return 1;
    }

    if (!all_torch.empty()) {
      double best_sum = 0.0;
      for (const auto& [key, sec] : peer_cell_best) best_sum += sec;
      const double t_torch = extrapolate(peer_reference, best_sum, peer_cell_best.size());
      const nlohmann::json& j = *peer;
      fmt::print("pytorch  : {:8.2f} s   {:10.0f} images*cells/s   (runs: {} s; torch {}, {} threads, {} cells timed, "
                 "{:.2f} s/cell, the fastest of {} processes each, extrapolated to {} cells + the float32 pass)\n",
                 t_torch, count * cells / t_torch, runs(all_torch), j["torch_version"].get<std::string>(), threads,
                 peer_cell_best.size(), best_sum / static_cast<double>(peer_cell_best.size()), all_torch.size(), cells);
      fmt::print("qsweep one-pass speed-up over PyTorch: {:.1f}x (fastest against fastest; round by round: {}x)\n",
                 t_torch / t_one, fmt::format("{:.1f}", fmt::join(round_ratio, " / ")));
      if (also_transforms) {
        fmt::print("  with run.conv_transforms = true: {:.1f}x (round by round: {}x)\n", t_torch / t_one_t,
                   fmt::format("{:.1f}", fmt::join(round_ratio_t, " / ")));
      }
      if (floor_s > 0.0) {
        fmt::print("  (the most any FP32 direct-convolution implementation of the one pass could reach on this "
                   "CPU: {:.1f}x, with nothing but the convolutions' and Gemms' multiply-adds, at the FMA peak{})\n",
                   t_torch / floor_s,
                   transforms ? "; this run's Winograd convolutions are not bound by it" : "");
      }
      // The peer computes the same cells: show the agreement.
      for (const auto& cell : j["cells"]) {
        const int layer = cell["layer"], bits = cell["bits"];
        for (const auto& c : one.cells) {
          if (c.layer == layer && c.weight_bits == bits) {
            fmt::print("  cell layer {:>2} {}-bit: top-1 qsweep {:.2f} torch {:.2f} | noise qsweep {:.5g} torch {:.5g}\n",
                       layer, bits, one.top1(c), cell["top1"].get<double>(), one.noise(c), cell["noise"].get<double>());
          }
        }
      }
    }
  } catch (const UserError& e) {
    fmt::print(stderr, "qsweep_bench_grid: error: {}\n", e.what());
    return 2;
  }
  return 0;
}
