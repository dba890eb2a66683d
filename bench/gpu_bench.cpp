// The GPU benchmark (issue 3): the full layer-wise grid on the GPU for the shipped ResNet and
// torchvision's ResNet18 at 224x224 (bench/export_resnet18.py), on generated data, with
// images*cells/s, the achieved FLOP/s of the float forward + suffix forwards against the
// card's FP32 peak, the same grid written naively in PyTorch on the same GPU
// (bench/torch_grid.py --device cuda, a sample of cells extrapolated) side by side, and the
// fused fake-quant convolution against cuDNN's for every conv layer's shape.
//
//   build/bench/qsweep_bench_gpu [--images 2048] [--batch 256] [--resnet18 bench/resnet18.onnx]
//
// Without a CUDA device it says so and exits 0.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <cstdlib>
#include <limits>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench/bench_util.h"
#include "bench/flops.h"
#include "experiments/config.h"
#include "experiments/layerwise.h"
#include "experiments/quant_plan.h"
#include "kernels/cuda/fq_conv.cuh"
#include "runtime/cuda_backend.h"
#include "runtime/data.h"
#include "runtime/onnx_import.h"

using namespace qsweep;

namespace {


// n seeded random images of the graph's input shape, labels in [0, classes).
Dataset generated(const Graph& g, int64_t n, int classes) {
  Dataset d;
  d.name = "generated";
  d.count = n;
  d.channels = g.input_shape[0];
  d.height = g.input_shape[1];
  d.width = g.input_shape[2];
  d.pixels.resize(static_cast<size_t>(n * d.sample_size()));
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> px(0, 255), lab(0, classes - 1);
  for (auto& p : d.pixels) p = static_cast<uint8_t>(px(rng));
  d.labels.resize(n);
  for (auto& l : d.labels) l = lab(rng);
  d.num_classes = classes;
  return d;
}

struct Model {
  std::string label, onnx;
  int classes;
  std::vector<float> mean, std;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qsweep GPU benchmark: the one-pass grid on CUDA vs a naive PyTorch grid on the same GPU"};
  int64_t images = 2048, batch = 256;
  int torch_cells = 6, reps = 20;
  std::string python = "python3", resnet18 = std::string(QSWEEP_SOURCE_DIR) + "/bench/resnet18.onnx";
  bool skip_torch = false, skip_conv = false, skip_tf32 = false, skip_transforms = false, conv_only = false;
  bool skip_bias = false, skip_cudnn_convs = false;
  std::string which = "all";
  std::vector<int> variants;
  app.add_option("--images", images, "Generated images per model");
  app.add_option("--batch", batch, "Images per batch (0: auto, from free device memory)");
  app.add_option("--resnet18", resnet18, "torchvision ResNet18 ONNX (bench/export_resnet18.py writes it)");
  app.add_option("--torch-cells", torch_cells, "Cells the PyTorch peer times (extrapolated to the grid)");
  app.add_option("--python", python, "Python with torch for the peer");
  app.add_option("--reps", reps, "Timed calls per convolution in the conv comparison");
  app.add_flag("--skip-torch", skip_torch, "Do not run the PyTorch peer");
  app.add_flag("--skip-conv", skip_conv, "Do not compare the fused conv with cuDNN");
  app.add_flag("--skip-tf32", skip_tf32, "Do not time the grid again with run.tf32 = true");
  app.add_flag("--skip-transforms", skip_transforms,
               "Do not time the grid again with cuDNN's FFT/Winograd convolutions allowed");
  app.add_flag("--skip-cudnn-convs", skip_cudnn_convs,
               "Do not time the grid again with every float convolution on cuDNN (BackendOptions::own_convs off)");
  app.add_flag("--skip-bias-correction", skip_bias,
               "Do not time the grid with empirical bias correction (quant.bias_correction = true)");
  app.add_flag("--conv-only", conv_only, "Only the fused conv vs cuDNN comparison (no grids; e.g. under ncu)");
  app.add_option("--variants", variants, "Fused-conv variants the conv table times (default: all)")
      ->check(CLI::Range(0, cuda::kFqConvVariants - 1))
      ->delimiter(',');
  bool in_use_only = false;
  app.add_flag("--in-use-only", in_use_only,
               "The conv table times only the fused-conv variant in use ($QSWEEP_FQCONV_VARIANT or the default)");
  app.add_option("--model", which,
                 "Which models: all (the shipped ResNet and ResNet18), shipped, resnet18, or mobilenetv2 (the "
                 "shipped MobileNetV2 alone)")
      ->check(CLI::IsMember({"all", "shipped", "resnet18", "mobilenetv2"}));
  CLI11_PARSE(app, argc, argv);
  if (in_use_only) variants = {cuda::fq_conv_variant()};

  if (cuda_device_count() <= 0) {
    fmt::print("no CUDA device ({}): nothing to measure\n", cuda_device_status());
    return 0;
  }
  BackendOptions bo;
  CudaBackend cuda(bo);
  const double peak = cuda.fp32_peak_flops();
  fmt::print("device   : {}\nlibraries: {}\nFP32 peak: {:.1f} TFLOP/s (SMs x FP32 lanes x 2 x max SM clock)\n",
             cuda.device_name(), cuda.library_versions(), peak / 1e12);

  std::vector<Model> models;
  if (which == "mobilenetv2") {
    models.push_back({"qsweep_mobilenetv2 (shipped, 1x28x28)",
                      std::string(QSWEEP_SOURCE_DIR) + "/models/qsweep_mobilenetv2.onnx", 10, {0.2860f}, {0.3530f}});
  } else if (which != "resnet18") {
    models.push_back({"qsweep_resnet (shipped, 1x28x28)", std::string(QSWEEP_SOURCE_DIR) + "/models/qsweep_resnet.onnx",
                      10, {0.2860f}, {0.3530f}});
  }
  if (which == "shipped" || which == "mobilenetv2") {
  } else if (std::filesystem::exists(resnet18)) {
    models.push_back({"torchvision resnet18 (random weights, 3x224x224)", resnet18, 1000, {0.485f, 0.456f, 0.406f},
                      {0.229f, 0.224f, 0.225f}});
  } else {
    fmt::print("(no {}: run bench/export_resnet18.py first for the ResNet18 rows)\n", resnet18);
  }

  int status_all = 0;
  for (const Model& m : models) {
    fmt::print("\n== {}: {} generated images, weight bits 3..8, activations 8 bits\n", m.label, images);
    Graph g = import_onnx(m.onnx);
    const Dataset data = generated(g, images, m.classes);
    const Normalization norm{m.mean, m.std};
    Executor exec(g, cuda);
    int64_t bs = batch;
    if (bs <= 0) bs = cuda.make_session(g)->max_batch(images);
    const std::vector<Shape> shapes = bench::one_image_shapes(g, norm, data);
    std::function<void()> bias_row;  // the bias-correction row, printed after the conv table
    if (!conv_only) {
      const auto t_cal = std::chrono::steady_clock::now();
      const ActivationRanges ranges = calibrate(exec, data, norm, std::min<int64_t>(512, images), bs, 1);
      const double cal_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_cal).count();
      QuantConfig qc;
      const std::vector<int> bits = {3, 4, 5, 6, 7, 8};
      const auto specs = resolve_layer_specs(g, qc);
      GridOptions o;
      o.batch_size = bs;
      o.threads = 1;
      o.progress = false;
      // Warm-up (cuDNN heuristics, kernel loading) on one batch, then the timed grid.
      run_layerwise_grid(exec, data, norm, std::min(bs, images), ranges, specs, bits, o);
      const GridResult r = run_layerwise_grid(exec, data, norm, images, ranges, specs, bits, o);
      const size_t cells = r.cells.size();
      const bench::GridFlops gf = bench::grid_flops(g, bench::node_flops(g, shapes), bits.size());
      const double flops = static_cast<double>(images) * gf.grid;
      fmt::print("qsweep   : {:8.2f} s   {:12.0f} images*cells/s   {} layers x {} bits, batch {}, calibration {:.2f} s\n",
                 r.seconds, images * cells / r.seconds, g.layers.size(), bits.size(), bs, cal_s);
      fmt::print("           {:.2f} TFLOP in the float forward + suffix forwards: {:.1f} TFLOP/s = {:.1f}% of the FP32 peak "
                 "(a naive grid would compute {:.2f} TFLOP: {:.2f}x more)\n",
                 flops / 1e12, flops / r.seconds / 1e12, 100.0 * flops / r.seconds / peak,
                 images * gf.naive / 1e12, images * gf.naive / flops);

      // The same grid under other backend options, against the default one.
      auto grid_with = [&](const char* label, const char* against, const BackendOptions& options) {
        CudaBackend other(options);
        Executor oe(g, other);
        run_layerwise_grid(oe, data, norm, std::min(bs, images), ranges, specs, bits, o);
        const GridResult t = run_layerwise_grid(oe, data, norm, images, ranges, specs, bits, o);
        double worst_top1 = 0.0, worst_noise = 0.0;
        for (size_t c = 0; c < cells; ++c) {
          worst_top1 = std::max(worst_top1, std::abs(t.top1(t.cells[c]) - r.top1(r.cells[c])));
          worst_noise = std::max(worst_noise, std::abs(t.cells[c].noise_sum - r.cells[c].noise_sum) /
                                                  std::max(r.cells[c].noise_sum, 1e-30));
        }
        fmt::print("{:<9}: {:8.2f} s   {:12.0f} images*cells/s   ({:.2f}x the {} grid; vs it: worst top-1 diff {:.2f} "
                   "points, worst noise diff {:.2g} relative)\n",
                   label, t.seconds, images * cells / t.seconds, r.seconds / t.seconds, against, worst_top1, worst_noise);
      };
      if (!skip_tf32) {  // TF32 allowed in cuDNN/cuBLAS (run.tf32 = true)
        BackendOptions to = bo;
        to.tf32 = true;
        grid_with("tf32", "FP32", to);
      }
      if (!skip_cudnn_convs && cuda.own_convs()) {  // every float convolution on cuDNN ($QSWEEP_CUDNN_CONVS=1)
        BackendOptions co = bo;
        co.own_convs = false;
        grid_with("cudnn", "default", co);
      }
      if (!skip_transforms) {  // cuDNN free to pick FFT / Winograd (not a config key: what would it gain?)
        BackendOptions xo = bo;
        xo.transform_convs = true;
        grid_with("fft/wino", "direct-only", xo);
      }

      if (!skip_torch) {
        const std::string spec = bench::sample_cells(r, torch_cells);
        const std::string cmd = fmt::format(
            "{} {}/bench/torch_grid.py --onnx '{}' --synthetic {} --images {} --calibration 512 --batch {} --threads 8 "
            "--device cuda --cells {} 2>&1",
            python, QSWEEP_SOURCE_DIR, m.onnx, images, images, bs, spec);
        if (const auto peer = bench::run_torch_peer(cmd)) {
          const nlohmann::json& j = *peer;
          const double per_cell = j["seconds_per_cell"];
          const double t_torch = j["reference_seconds"].get<double>() + per_cell * cells;
          fmt::print("pytorch  : {:8.2f} s   {:12.0f} images*cells/s   (torch {}, TF32 off, {} cells timed, {:.3f} s/cell, "
                     "extrapolated to {} cells + the float32 pass)\n",
                     t_torch, images * cells / t_torch, j["torch_version"].get<std::string>(), j["cells"].size(), per_cell, cells);
          fmt::print("qsweep one-pass throughput over the naive PyTorch grid: {:.1f}x\n", t_torch / r.seconds);
          // Which convolution kernels PyTorch's default heuristics run (direct, Winograd, FFT?).
          if (j.contains("conv_kernels") && !j["conv_kernels"].empty()) {
            fmt::print("pytorch  : its conv-like kernels in one float forward of a batch, by device time:\n");
            for (const auto& k : j["conv_kernels"]) {
              fmt::print("             {:8.3f} ms  {}\n", k[1].get<double>(), k[0].get<std::string>());
            }
          }
        }
      }
      if (!skip_bias) {
        // Run after the conv table: the host path below can be slow, and a timeout must not
        // cost the table.
        bias_row = [&, ranges, specs, bits, o, cells, plain = r.seconds] {
          // The grid with empirical bias correction (quant.bias_correction = true): every cell's
          // bias from one pass over 512 calibration images, made on the device
          // (DeviceSession::bias_sums) and, for comparison, through host tensors node by node
          // (QSWEEP_HOST_BIAS_CORRECTION=1, the path before the device one).
          const BiasCorrectionSource bcs{&data, norm, std::min<int64_t>(512, images)};
          auto timed = [&](bool host_path, GridResult& out) {
            if (host_path) setenv("QSWEEP_HOST_BIAS_CORRECTION", "1", 1);
            const auto t0 = std::chrono::steady_clock::now();
            out = run_layerwise_grid(exec, data, norm, images, ranges, specs, bits, o, &bcs);
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            unsetenv("QSWEEP_HOST_BIAS_CORRECTION");
            return s;
          };
          GridResult dev, host;
          const double s_dev = timed(false, dev), s_host = timed(true, host);
          double worst_top1 = 0.0;
          for (size_t c = 0; c < cells; ++c) worst_top1 = std::max(worst_top1, std::abs(dev.top1(dev.cells[c]) - host.top1(host.cells[c])));
          fmt::print("bias corr: {:8.2f} s   {:12.0f} images*cells/s   (the grid with quant.bias_correction = true, biases "
                     "from 512 calibration images made on the device: {:.2f}x the plain grid's time; through host tensors "
                     "{:.2f} s; worst top-1 diff between the two {:.2f} points)\n",
                     s_dev, images * cells / s_dev, s_dev / plain, s_host, worst_top1);
        };
      }
    }

    if (!skip_conv) {
      // Every distinct conv shape of the network at this batch size.
      std::vector<std::string> seen;
      double log_sum = 0.0, worst = 0.0, fused_total = 0.0, cudnn_total = 0.0, unfused_total = 0.0;
      double nhwc_total = 0.0, nhwc_nchw_total = 0.0;  // cuDNN in NHWC, and in NCHW on the same shapes
      const int nv = cuda::kFqConvVariants;
      std::vector<double> v_log(nv, 0.0), v_worst(nv, 0.0), v_total(nv, 0.0);
      int n = 0;
      fmt::print("conv     : fused fake-quant conv (input+output fake-quant, bias, ReLU) vs cuDNN, batch {}, median of {}\n",
                 bs, reps);
      for (const Layer& L : g.layers) {
        const Node& node = g.nodes[L.node];
        if (node.op != OpType::kConv) continue;
        Shape xs = shapes[node.inputs[0]];
        xs[0] = bs;
        const Shape& wsh = g.values[node.inputs[1]].constant.shape;
        const std::string key = fmt::format("{}|{}", shape_str(xs), shape_str(wsh));
        if (std::find(seen.begin(), seen.end(), key) != seen.end()) continue;
        seen.push_back(key);
        const ConvTiming t = time_layer_conv(node, xs, wsh, reps, bo, variants);
        const double ratio = t.fused_ms / t.cudnn_bias_relu_ms;
        fmt::print("  {:<40} cuDNN {:7.3f} ms ({:5.1f} TFLOP/s), cuDNN+bias+ReLU {:7.3f} ms, fused {:7.3f} ms "
                   "({:5.1f} TFLOP/s): {:.2f}x\n",
                   t.shape, t.cudnn_ms, t.flops / t.cudnn_ms / 1e9, t.cudnn_bias_relu_ms, t.fused_ms,
                   t.flops / t.fused_ms / 1e9, ratio);
        std::string variants;
        for (int v = 0; v < nv; ++v) {
          if (std::isnan(t.fused_variant_ms[v])) continue;
          const double rv = t.fused_variant_ms[v] / t.cudnn_bias_relu_ms;
          variants += fmt::format("{}v{} {:.3f} ms ({:.2f}x)", variants.empty() ? "" : ", ", v, t.fused_variant_ms[v], rv);
          v_log[v] += std::log(rv);
          v_worst[v] = std::max(v_worst[v], rv);
          v_total[v] += t.fused_variant_ms[v];
        }
        fmt::print("  {:<40} variants: {}; unfused (fake-quant, cuDNN+bias+ReLU, fake-quant) {:.3f} ms ({:.2f}x); "
                   "cuDNN+bias+ReLU in NHWC {:.3f} ms ({:.2f}x)\n",
                   "", variants, t.unfused_ms, t.unfused_ms / t.cudnn_bias_relu_ms, t.cudnn_nhwc_bias_relu_ms,
                   t.cudnn_nhwc_bias_relu_ms / t.cudnn_bias_relu_ms);
        if (!std::isnan(t.cudnn_nhwc_bias_relu_ms)) {
          nhwc_total += t.cudnn_nhwc_bias_relu_ms;
          nhwc_nchw_total += t.cudnn_bias_relu_ms;
        }
        unfused_total += t.unfused_ms;
        log_sum += std::log(ratio);
        worst = std::max(worst, ratio);
        fused_total += t.fused_ms;
        cudnn_total += t.cudnn_bias_relu_ms;
        ++n;
      }
      if (n) {
        fmt::print("conv     : fused (variant {} in use) / cuDNN(+bias+ReLU) time: geometric mean {:.2f}x, worst {:.2f}x, "
                   "summed {:.2f}x (target: within 1.5x)\n",
                   cuda::fq_conv_variant(), std::exp(log_sum / n), worst, fused_total / cudnn_total);
        fmt::print("conv     :   unfused path: summed {:.2f}x\n", unfused_total / cudnn_total);
        fmt::print("conv     :   cuDNN conv+bias+ReLU, NHWC / NCHW time, summed over the shapes it runs: {:.2f}x\n",
                   nhwc_nchw_total > 0 ? nhwc_total / nhwc_nchw_total : std::numeric_limits<double>::quiet_NaN());
        for (int v = 0; v < nv; ++v) {
          if (v_total[v] == 0.0) continue;  // not timed
          fmt::print("conv     :   variant {}: geometric mean {:.2f}x, worst {:.2f}x, summed {:.2f}x\n", v,
                     std::exp(v_log[v] / n), v_worst[v], v_total[v] / cudnn_total);
        }
      }
    }
    if (bias_row) bias_row();
  }
  return status_all;
}
