// The CPU convolutions side by side, one thread, on the shipped ResNet's conv shapes
// (batch 250, NHWC, ReLU fused): oneDNN's primitive against qsweep's own kernels, the ones the
// CPU backend picks by default (kernels/cpu/direct_conv.h) and with run.conv_transforms
// (kernels/cpu/winograd.h, kernels/cpu/strip_conv.h). Inputs rotate over several buffers so
// that, as in a grid, they do not sit in cache. Prints each kernel's best time per call, the
// ratio to oneDNN, and the largest difference from oneDNN's output (0: the same bits).
#include <oneapi/dnnl/dnnl.hpp>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "kernels/cpu/direct_conv.h"
#include "kernels/cpu/strip_conv.h"
#include "kernels/cpu/winograd.h"

namespace {

using namespace qsweep;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

double seconds_now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

struct Shape {
  int64_t C, HW, K, k, s;
};

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qsweep CPU convolution kernels against oneDNN, one thread"};
  int64_t batch = 250;
  int reps = 20, rounds = 5, buffers = 8;
  app.add_option("--batch", batch, "Images per call")->check(CLI::PositiveNumber);
  app.add_option("--reps", reps, "Calls per timed round")->check(CLI::PositiveNumber);
  app.add_option("--rounds", rounds, "Timed rounds; each kernel keeps its fastest")->check(CLI::PositiveNumber);
  app.add_option("--buffers", buffers, "Input/output buffers the calls rotate over")->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  omp_set_num_threads(1);
  if (!winograd_cpu_supported()) {
    fmt::print("this CPU has no AVX-512: qsweep's own convolution kernels are not used here\n");
    return 0;
  }
  // The shipped qsweep_resnet's convolutions after the stem (C -> K, kernel, stride, input size).
  const std::vector<Shape> shapes = {{16, 14, 16, 3, 1}, {16, 14, 32, 3, 2}, {16, 14, 32, 1, 2}, {32, 7, 32, 3, 1},
                                     {32, 7, 64, 3, 2},  {32, 7, 64, 1, 2},  {64, 4, 64, 3, 1}};
  dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  dnnl::stream st(eng);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  fmt::print("batch {}, one thread, best of {} rounds of {} calls, {} rotating buffers\n", batch, rounds, reps,
             buffers);
  fmt::print("{:<22} {:>10} | {:<33} | {:<33}\n", "shape", "oneDNN", "default (qsweep direct)",
             "run.conv_transforms");
  for (const Shape& s : shapes) {
    const int64_t pad = s.k / 2, out = (s.HW + 2 * pad - s.k) / s.s + 1;
    DirectConv p;
    p.N = batch, p.H = p.W = s.HW, p.C = s.C, p.K = s.K, p.kh = p.kw = s.k, p.stride_h = p.stride_w = s.s;
    p.pad_t = p.pad_l = pad, p.out_h = p.out_w = out, p.clamp = true, p.lo = 0.0f;
    p.hi = std::numeric_limits<float>::infinity();
    std::vector<std::vector<float>> xs(buffers), ys(buffers);
    for (auto& x : xs) {
      x.resize(batch * s.HW * s.HW * s.C);
      for (auto& v : x) v = std::max(0.0f, nd(rng));
    }
    for (auto& y : ys) y.resize(batch * out * out * s.K);
    std::vector<float> w(s.K * s.C * s.k * s.k), b(s.K);
    for (auto& v : w) v = 0.1f * nd(rng);
    for (auto& v : b) v = 0.1f * nd(rng);

    // oneDNN: the primitive the backend creates (NHWC, weights in its preferred layout, ReLU
    // post-op); the weights reordered once, outside the timing.
    const dnnl::memory::desc src({batch, s.C, s.HW, s.HW}, dt::f32, tag::nhwc),
        dst({batch, s.K, out, out}, dt::f32, tag::nhwc), wei({s.K, s.C, s.k, s.k}, dt::f32, tag::oihw),
        bia({s.K}, dt::f32, tag::x), wany({s.K, s.C, s.k, s.k}, dt::f32, tag::any);
    dnnl::convolution_forward::desc d(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct, src,
                                      wany, bia, dst, {s.s, s.s}, {0, 0}, {pad, pad}, {pad, pad});
    dnnl::post_ops po;
    po.append_eltwise(1.0f, dnnl::algorithm::eltwise_relu, 0.0f, 0.0f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(po);
    dnnl::convolution_forward::primitive_desc pd(d, attr, eng);
    dnnl::convolution_forward prim(pd);
    std::vector<float> wk(pd.weights_desc().get_size() / sizeof(float));
    dnnl::memory wm(wei, eng, w.data()), wkm(pd.weights_desc(), eng, wk.data()), bm(bia, eng, b.data());
    dnnl::reorder(wm, wkm).execute(st, wm, wkm);
    st.wait();
    std::vector<float> reference(ys[0].size());
    auto onednn = [&](int i, float* y) {
      dnnl::memory sm(src, eng, xs[i].data()), dm(dst, eng, y);
      prim.execute(st, {{DNNL_ARG_SRC, sm}, {DNNL_ARG_WEIGHTS, wkm}, {DNNL_ARG_BIAS, bm}, {DNNL_ARG_DST, dm}});
      st.wait();
    };
    onednn(0, reference.data());

    DirectConvScratch ds;
    WinogradScratch ws;
    WinogradConv wp;
    wp.N = p.N, wp.H = p.H, wp.W = p.W, wp.C = p.C, wp.K = p.K, wp.pad_t = wp.pad_l = pad;
    wp.out_h = wp.out_w = out, wp.clamp = true, wp.lo = 0.0f, wp.hi = p.hi;
    // What the backend runs (kernels/cpu, runtime/cpu_backend.cpp's run_conv).
    const bool strided = s.s > 1;
    std::function<void(int, float*)> by_default, with_transforms;
    std::string default_name = "oneDNN", transform_name = "oneDNN";
    auto direct = [&](int i, float* y) { direct_conv(p, xs[i].data(), w.data(), b.data(), y, ds); };
    if (s.C >= 32 || (strided && s.k == 1)) {
      by_default = direct;
      default_name = "direct";
    }
    with_transforms = by_default;
    transform_name = default_name;
    if (s.k == 3 && s.s == 1 && winograd_available(wp)) {
      with_transforms = [&](int i, float* y) { winograd_conv_f43(wp, xs[i].data(), w.data(), b.data(), y, ws); };
      transform_name = "Winograd";
    } else if (strip_conv_available(p)) {
      with_transforms = [&](int i, float* y) { strip_conv(p, xs[i].data(), w.data(), b.data(), y, ds); };
      transform_name = "strip";
    }

    auto best = [&](const std::function<void(int, float*)>& f) {
      double t_best = 1e300;
      for (int r = 0; r < rounds; ++r) {
        const double t0 = seconds_now();
        for (int i = 0; i < reps; ++i) f(i % buffers, ys[i % buffers].data());
        t_best = std::min(t_best, (seconds_now() - t0) / reps);
      }
      return t_best;
    };
    auto max_diff = [&](const std::function<void(int, float*)>& f) {
      std::vector<float> y(reference.size());
      f(0, y.data());
      double m = 0.0;
      for (size_t i = 0; i < y.size(); ++i) m = std::max(m, static_cast<double>(std::abs(y[i] - reference[i])));
      return m;
    };
    const double t_dnnl = best(onednn);
    auto column = [&](const std::string& name, const std::function<void(int, float*)>& f) {
      if (!f) return fmt::format("{:<8} {:>8} {:>6} {:>8}", name, "", "", "");
      const double t = best(f);
      return fmt::format("{:<8} {:6.3f}ms {:5.2f}x {:8.1e}", name, t * 1e3, t_dnnl / t, max_diff(f));
    };
    fmt::print("{:<22} {:8.3f}ms | {} | {}\n", fmt::format("{}->{} {}x{} s{} {}x{}", s.C, s.K, s.k, s.k, s.s, s.HW, s.HW),
               t_dnnl * 1e3, column(default_name, by_default), column(transform_name, with_transforms));
  }
  fmt::print("columns: kernel, time per call, oneDNN's time / its time, max |difference| from oneDNN's output\n");
  return 0;
}
