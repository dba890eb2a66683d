// The layer-wise grid three ways in one process, side by side: qsweep's one pass, qsweep's
// naive way (full forward per cell), and the same grid written in PyTorch the way a
// researcher would (bench/torch_grid.py: full network per cell, fake_quantize_per_tensor_affine),
// timed on a sample of cells and extrapolated to the grid.
//
//   build/bench/qsweep_bench_grid [--config configs/quickstart.toml] [--images N] [--torch-cells K]
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>
#include <omp.h>

#include "bench/bench_util.h"
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
  bool skip_naive = false, skip_torch = false;
  std::string python = "/usr/bin/python3";
  app.add_option("--config", config, "Config to benchmark (default: the quickstart)");
  app.add_option("--images", images, "Evaluation images (default: the config's, i.e. the full test set)");
  app.add_option("--torch-cells", torch_cells, "Cells the PyTorch peer times (extrapolated to the grid)");
  app.add_option("--python", python, "Python with torch for the peer");
  app.add_option("--repeat", repeat,
                 "Time each way this many times (one pass and naive alternating, and the peer's cells) and keep "
                 "the fastest of each: this machine's timings vary by 10% from run to run")
      ->check(CLI::PositiveNumber);
  app.add_flag("--skip-naive", skip_naive, "Do not time the naive way");
  app.add_flag("--skip-torch", skip_torch, "Do not run the PyTorch peer");
  CLI11_PARSE(app, argc, argv);

  try {
    Config cfg = load_config(config, {});
    if (images > 0) cfg.eval_count = images;
    const Graph g = import_onnx(cfg.model_path);
    const auto backend = make_backend("cpu");
    const Executor exec(g, *backend);
    const Dataset calib = load_idx_split(cfg.data_path, cfg.calibration_split);
    const Dataset eval = load_idx_split(cfg.data_path, cfg.eval_split);
    const Normalization norm{cfg.mean, cfg.std};
    const int threads = cfg.threads > 0 ? cfg.threads : omp_get_num_procs();
    const int64_t count = cfg.eval_count > 0 ? std::min(cfg.eval_count, eval.count) : eval.count;
    const ActivationRanges ranges = calibrate(exec, calib, norm, cfg.calibration_count, cfg.batch_size, threads);
    const size_t cells = g.layers.size() * cfg.quant.weight_bits.size();
    fmt::print("model {} | {} layers x {} bit-widths = {} cells | {} images | {} threads | batch {} | best of {}\n",
               cfg.model_path, g.layers.size(), cfg.quant.weight_bits.size(), cells, count, threads, cfg.batch_size,
               repeat);

    GridOptions o;
    o.batch_size = cfg.batch_size;
    o.threads = threads;
    o.progress = false;
    const auto specs = resolve_layer_specs(g, cfg.quant);
    // Each way `repeat` times, alternating, so a slow stretch of the machine hits both.
    auto timed = [&](bool naive, GridResult& result) {
      o.naive = naive;
      const auto t0 = std::chrono::steady_clock::now();
      result = run_layerwise_grid(exec, eval, norm, count, ranges, specs, cfg.quant.weight_bits, o);
      return seconds_since(t0);
    };
    GridResult one, naive;
    double t_one = 1e300, t_naive = 1e300;
    std::vector<double> all_one, all_naive;
    for (int r = 0; r < repeat; ++r) {
      all_one.push_back(timed(false, one));
      t_one = std::min(t_one, all_one.back());
      if (!skip_naive) {
        all_naive.push_back(timed(true, naive));
        t_naive = std::min(t_naive, all_naive.back());
      }
    }
    auto runs = [](const std::vector<double>& v) { return fmt::format("{:.2f}", fmt::join(v, " / ")); };
    fmt::print("one-pass : {:8.2f} s   {:10.0f} images*cells/s   (runs: {} s)\n", t_one, count * cells / t_one,
               runs(all_one));
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

    if (!skip_torch) {
      const std::string spec = bench::sample_cells(one, torch_cells);
      const std::string cmd = fmt::format(
          "{} {}/bench/torch_grid.py --onnx '{}' --data '{}' --mean {} --std {} --calibration {} --images {} "
          "--batch {} --threads {} --cells {} --repeat {} 2>&1",
          python, QSWEEP_SOURCE_DIR, cfg.model_path, cfg.data_path, cfg.mean[0], cfg.std[0], cfg.calibration_count,
          count, cfg.batch_size, threads, spec, repeat);
      if (const auto peer = bench::run_torch_peer(cmd)) {
        const nlohmann::json& j = *peer;
        const double per_cell = j["seconds_per_cell"];
        // The float32 reference pass plus every cell's full pass, as the researcher's script runs.
        const double t_torch = j["reference_seconds"].get<double>() + per_cell * cells;
        fmt::print("pytorch  : {:8.2f} s   {:10.0f} images*cells/s   (torch {}, {} threads, {} cells timed, "
                   "{:.2f} s/cell, best of {}, extrapolated to {} cells + the float32 pass)\n",
                   t_torch, count * cells / t_torch, j["torch_version"].get<std::string>(), threads, j["cells"].size(), per_cell,
                   repeat, cells);
        fmt::print("qsweep one-pass speed-up over PyTorch: {:.1f}x\n", t_torch / t_one);
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
    }
  } catch (const UserError& e) {
    fmt::print(stderr, "qsweep_bench_grid: error: {}\n", e.what());
    return 2;
  }
  return 0;
}
