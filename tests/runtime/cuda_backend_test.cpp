// The CUDA backend against its CPU twin: every op on seeded random shapes, the fused
// fake-quant convolution against the unfused CUDA path (fake-quant -> cuDNN -> fake-quant)
// and the CPU backend's, rounding ties included, and whole grids on the shipped models.
// Suites named Cuda* skip, with the reason, where no CUDA device is present.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <stdexcept>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <cuda_runtime.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "experiments/config.h"
#include "experiments/layerwise.h"
#include "experiments/quant_plan.h"
#include "kernels/cpu/eltwise.h"
#include "kernels/cpu/fake_quant.h"
#include "kernels/cpu/metrics.h"
#include "kernels/cuda/fake_quant.cuh"
#include "kernels/cuda/fq_conv.cuh"
#include "kernels/cuda/ops.cuh"
#include "runtime/cpu_backend.h"
#include "runtime/cuda_backend.h"
#include "runtime/data.h"
#include "runtime/device_session.h"
#include "runtime/error.h"
#include "runtime/onnx_import.h"
#include "tests/partly_nan.h"
#include "tests/runtime/onnx_builder.h"
#include "tests/shipped_models.h"

namespace qsweep {
namespace {

// ---------------------------------------------------------------- tolerances
//
// NMSE = sum (cuda - cpu)^2 / sum cpu^2. Both sides are float32; they differ only in the
// order of the additions of a dot product (cuDNN's / our kernels' tiling vs oneDNN's), each
// ordering a random walk of ~sqrt(K) roundings (u = 2^-24), NMSE ~ K u^2 ~ 1e-13 for the
// fan-ins used here (K <= ~150): the limit leaves ~100x.
constexpr double kMaxNmseConv = 1e-11;
constexpr double kMaxNmseGemm = 1e-11;
// Pooling (sums of <= 9 values), softmax and sigmoid (expf vs std::exp: a few ulps),
// BatchNormalization and HardSigmoid/HardSwish (two roundings, no contraction).
constexpr double kMaxNmsePool = 1e-12;
constexpr double kMaxNmseTranscendental = 1e-12;
constexpr double kMaxNmseAffine = 1e-13;
// Exact ops (Relu, Clip, LeakyRelu, MaxPool, Add, Mul, Concat, Flatten, Reshape, Pad,
// fake-quant) must match bit for bit.
//
// Fused fake-quant conv: its outputs are on the output quantizer's grid. A different
// summation order moves a pre-quantization value by ~1e-7 relative, which changes its
// rounding only when it lies that close to a rounding boundary: such elements differ by
// exactly one step. The limits: no element more than one step away, at most 1 in 200 one
// step away (measured: far fewer; printed by the test).
constexpr double kMaxOneStepFraction = 0.005;
// Whole grids (method.md metrics), CUDA vs CPU on the full 10,000-image test set: top-1
// within 0.05 points (5 images), noise within 1% relative (issue 3).
constexpr double kMaxTop1Points = 0.05;
constexpr double kMaxNoiseRelative = 0.01;

bool have_device(std::string* why) {
  if (cuda_device_count() > 0) return true;
  *why = "no CUDA device (" + cuda_device_status() + ")";
  return false;
}

#define REQUIRE_CUDA_DEVICE()                  \
  do {                                         \
    std::string why_;                          \
    if (!have_device(&why_)) GTEST_SKIP() << why_; \
  } while (0)

Tensor random_tensor(std::mt19937& rng, Shape s, float lo = -1.0f, float hi = 1.0f) {
  Tensor t(std::move(s));
  std::uniform_real_distribution<float> d(lo, hi);
  for (float& v : t.data) v = d(rng);
  return t;
}

int64_t rand_int(std::mt19937& rng, int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); }

Tensor nchw(const Tensor& t) {
  Tensor out;
  to_nchw(t, out);
  out.shape = t.shape;
  return out;
}

double nmse(const Tensor& got, const Tensor& ref) {
  EXPECT_EQ(got.shape, ref.shape);
  if (got.data.size() != ref.data.size()) return INFINITY;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < ref.data.size(); ++i) {
    const double d = static_cast<double>(got.data[i]) - ref.data[i];
    num += d * d;
    den += static_cast<double>(ref.data[i]) * ref.data[i];
  }
  if (std::isnan(num)) return INFINITY;
  return den > 0.0 ? num / den : num;
}

struct Worst {
  std::string what;
  double value = 0.0;
  int cases = 0;
  void add(double v) {
    value = std::max(value, v);
    ++cases;
  }
  ~Worst() {
    if (cases) std::printf("[ %s ] %d cases: worst %.3g\n", what.c_str(), cases, value);
  }
};

// Runs node n on both backends with the given inputs; returns {cuda, cpu} in NCHW.
std::pair<Tensor, Tensor> both(const Node& n, const std::vector<Tensor>& in) {
  static CpuBackend cpu;
  static CudaBackend cuda(BackendOptions{});
  std::vector<const Tensor*> args;
  for (const Tensor& t : in) args.push_back(&t);
  auto cc = cpu.make_context();
  auto gc = cuda.make_context();
  Tensor a, b;
  cuda.run(*gc, n, args, a);
  cpu.run(*cc, n, args, b);
  return {nchw(a), nchw(b)};
}

Node conv_node(int64_t k, int64_t stride, std::vector<int64_t> pads, int64_t dil, int64_t group) {
  Node n;
  n.name = "conv";
  n.op = OpType::kConv;
  n.attrs.kernel = {k, k};
  n.attrs.strides = {stride, stride};
  n.attrs.dilations = {dil, dil};
  n.attrs.pads = std::move(pads);
  n.attrs.group = group;
  return n;
}

// ---------------------------------------------------------------- ops

TEST(CudaOps, ConvMatchesCpuTwin) {
  REQUIRE_CUDA_DEVICE();
  std::mt19937 rng(11);
  Worst worst{"Conv NMSE"};
  for (int t = 0; t < 40; ++t) {
    const int kind = t % 3;  // dense, grouped, depthwise
    const int64_t G = kind == 0 ? 1 : kind == 1 ? 2 : rand_int(rng, 2, 6);
    const int64_t C = kind == 2 ? G : G * rand_int(rng, 1, 4), O = kind == 2 ? G : G * rand_int(rng, 1, 5);
    const int64_t k = rand_int(rng, 1, 3), s = rand_int(rng, 1, 2), d = rand_int(rng, 1, 2);
    std::vector<int64_t> pads = {rand_int(rng, 0, 1), rand_int(rng, 0, 1), rand_int(rng, 0, 1), rand_int(rng, 0, 1)};
    if (t % 2 == 0) pads = {pads[0], pads[0], pads[0], pads[0]};  // symmetric: the cuDNN path
    Node n = conv_node(k, s, pads, d, G);
    const int64_t H = rand_int(rng, (k - 1) * d + 1, 12), W = rand_int(rng, (k - 1) * d + 1, 12);
    std::vector<Tensor> in = {random_tensor(rng, {rand_int(rng, 1, 3), C, H, W}), random_tensor(rng, {O, C / G, k, k})};
    if (t % 4 != 3) in.push_back(random_tensor(rng, {O}));
    const auto [got, ref] = both(n, in);
    const double e = nmse(got, ref);
    EXPECT_LE(e, kMaxNmseConv) << "case " << t;
    worst.add(e);
  }
}

// The float network's direct convolution (BackendOptions::own_convs, the default): kernels
// larger than 1x1 with 16-64 input channels per group, symmetric and asymmetric padding,
// strides and dilations, with and without bias, against cuDNN (own_convs off) and the CPU
// twin. The direct kernel sums in another order than cuDNN, so most outputs differ from
// cuDNN's in the last bits: that they do shows the direct kernel ran. (With asymmetric
// padding cuDNN cannot run the convolution and the fused kernel does on both sides: those
// cases are compared with the CPU only.)
TEST(CudaOps, DirectConvMatchesCudnnAndCpuTwin) {
  REQUIRE_CUDA_DEVICE();
  if (const char* e = std::getenv("QSWEEP_CUDNN_CONVS"); e != nullptr && *e != '\0') {
    GTEST_SKIP() << "QSWEEP_CUDNN_CONVS is set (" << e << "): this test needs the default";
  }
  std::mt19937 rng(17);
  CpuBackend cpu;
  CudaBackend own{BackendOptions{}};
  BackendOptions co;
  co.own_convs = false;
  CudaBackend dnn{co};
  ASSERT_NE(own.device_name().find("direct FP32 kernel"), std::string::npos) << own.device_name();
  ASSERT_EQ(dnn.device_name().find("direct FP32 kernel"), std::string::npos) << dnn.device_name();
  Worst worst{"direct conv NMSE (vs CPU, vs cuDNN)"};
  int differ = 0, on_cudnn = 0;
  const int cases = 24;
  for (int t = 0; t < cases; ++t) {
    const int64_t G = t % 3 == 2 ? 2 : 1;
    const int64_t C = G * 16 * rand_int(rng, 1, 4), O = G * rand_int(rng, 1, 150);
    const int64_t k = t % 4 == 0 ? 5 : rand_int(rng, 2, 3), s = rand_int(rng, 1, 2), d = rand_int(rng, 1, 2);
    std::vector<int64_t> pads = {rand_int(rng, 0, 2), rand_int(rng, 0, 2), rand_int(rng, 0, 2), rand_int(rng, 0, 2)};
    if (t % 2 == 0) pads = {pads[0], pads[0], pads[0], pads[0]};
    const bool symmetric = pads[0] == pads[2] && pads[1] == pads[3];  // ONNX order: top, left, bottom, right
    Node n = conv_node(k, s, pads, d, G);
    const int64_t H = rand_int(rng, (k - 1) * d + 1, 16), W = rand_int(rng, (k - 1) * d + 1, 16);
    std::vector<Tensor> in = {random_tensor(rng, {rand_int(rng, 1, 3), C, H, W}), random_tensor(rng, {O, C / G, k, k})};
    if (t % 3 != 1) in.push_back(random_tensor(rng, {O}));
    std::vector<const Tensor*> args;
    for (const Tensor& x : in) args.push_back(&x);
    Tensor a, b, c;
    auto oc = own.make_context();
    auto dc = dnn.make_context();
    auto cc = cpu.make_context();
    own.run(*oc, n, args, a);
    dnn.run(*dc, n, args, b);
    cpu.run(*cc, n, args, c);
    const Tensor got = nchw(a), cudnn = nchw(b), ref = nchw(c);
    const double e = symmetric ? std::max(nmse(got, ref), nmse(got, cudnn)) : nmse(got, ref);
    EXPECT_LE(e, kMaxNmseConv) << "case " << t;
    worst.add(e);
    if (symmetric) {
      ++on_cudnn;
      if (got.data != cudnn.data) ++differ;
    }
  }
  ASSERT_GE(on_cudnn, cases / 2);
  EXPECT_GE(differ, on_cudnn / 2) << "the direct kernel's outputs equal cuDNN's bit for bit: did it run?";
}

// $QSWEEP_CUDNN_CONVS: 1 hands every convolution back to cuDNN; other values are refused
// before any device work (so this runs without a device too).
TEST(CudaBackendOptions, CudnnConvsVariableIsChecked) {
  struct Restore {  // the caller's own value, if any
    std::optional<std::string> saved;
    Restore() {
      if (const char* e = std::getenv("QSWEEP_CUDNN_CONVS")) saved = e;
    }
    ~Restore() {
      if (saved) setenv("QSWEEP_CUDNN_CONVS", saved->c_str(), 1);
      else unsetenv("QSWEEP_CUDNN_CONVS");
    }
  } restore;
  setenv("QSWEEP_CUDNN_CONVS", "yes", 1);
  try {
    CudaBackend b{BackendOptions{}};
    ADD_FAILURE() << "QSWEEP_CUDNN_CONVS=yes was accepted";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("QSWEEP_CUDNN_CONVS='yes': accepted values are 0 and 1"), std::string::npos)
        << e.what();
  } catch (const std::exception& e) {
    ADD_FAILURE() << "another error: " << e.what();
  }
  unsetenv("QSWEEP_CUDNN_CONVS");
  std::string why;
  if (!have_device(&why)) return;
  setenv("QSWEEP_CUDNN_CONVS", "1", 1);
  const std::string off = CudaBackend{BackendOptions{}}.device_name();
  unsetenv("QSWEEP_CUDNN_CONVS");
  EXPECT_EQ(off.find("direct FP32 kernel"), std::string::npos) << off;
  EXPECT_NE(CudaBackend{BackendOptions{}}.device_name().find("direct FP32 kernel"), std::string::npos);
}

TEST(CudaOps, GemmAndMatMulMatchCpuTwin) {
  REQUIRE_CUDA_DEVICE();
  std::mt19937 rng(12);
  Worst worst{"Gemm/MatMul NMSE"};
  for (int t = 0; t < 12; ++t) {
    const int64_t M = rand_int(rng, 1, 9), K = rand_int(rng, 1, 150), N = rand_int(rng, 1, 40);
    Node g;
    g.name = "gemm";
    g.op = OpType::kGemm;
    g.attrs.trans_b = t % 2 == 0;
    g.attrs.alpha = t % 3 == 0 ? 0.5f : 1.0f;
    g.attrs.beta = t % 5 == 0 ? 2.0f : 1.0f;
    std::vector<Tensor> in = {random_tensor(rng, {M, K}), random_tensor(rng, g.attrs.trans_b ? Shape{N, K} : Shape{K, N}),
                              random_tensor(rng, t % 3 == 1 ? Shape{M, N} : Shape{N})};
    auto [got, ref] = both(g, in);
    EXPECT_LE(nmse(got, ref), kMaxNmseGemm) << "Gemm case " << t;
    worst.add(nmse(got, ref));
    Node m;
    m.name = "matmul";
    m.op = OpType::kMatMul;
    std::vector<Tensor> mi = {random_tensor(rng, {2, M, K}), random_tensor(rng, {K, N})};
    if (t % 2) mi.push_back(random_tensor(rng, {N}));  // a plan's corrected bias, per output feature
    auto [mg, mr] = both(m, mi);
    EXPECT_LE(nmse(mg, mr), kMaxNmseGemm) << "MatMul case " << t;
    worst.add(nmse(mg, mr));
  }
}

TEST(CudaOps, PoolingMatchesCpuTwin) {
  REQUIRE_CUDA_DEVICE();
  std::mt19937 rng(13);
  Worst worst{"AveragePool NMSE"};
  for (int t = 0; t < 24; ++t) {
    Node n;
    n.name = "pool";
    n.op = t % 2 ? OpType::kMaxPool : OpType::kAveragePool;
    const int64_t k = rand_int(rng, 1, 3), s = rand_int(rng, 1, 3), p = std::min<int64_t>(k / 2, rand_int(rng, 0, 1));
    n.attrs.kernel = {k, k};
    n.attrs.strides = {s, s};
    n.attrs.dilations = {1, 1};
    n.attrs.pads = {p, p, p, p};
    n.attrs.ceil_mode = t % 3 == 0;
    n.attrs.count_include_pad = t % 4 < 2;
    std::vector<Tensor> in = {random_tensor(rng, {rand_int(rng, 1, 2), rand_int(rng, 1, 5), rand_int(rng, k, 11), rand_int(rng, k, 11)})};
    auto [got, ref] = both(n, in);
    if (n.op == OpType::kMaxPool) {
      EXPECT_EQ(got.data, ref.data) << "MaxPool case " << t;
    } else {
      EXPECT_LE(nmse(got, ref), kMaxNmsePool) << "AveragePool case " << t;
      worst.add(nmse(got, ref));
    }
  }
  Node gap;
  gap.name = "gap";
  gap.op = OpType::kGlobalAveragePool;
  auto [got, ref] = both(gap, {random_tensor(rng, {3, 7, 5, 6})});
  EXPECT_LE(nmse(got, ref), 1e-14);
}

TEST(CudaOps, ElementwiseAndDataMovementMatchCpuTwin) {
  REQUIRE_CUDA_DEVICE();
  std::mt19937 rng(14);
  const Tensor x = random_tensor(rng, {2, 3, 4, 5}, -8.0f, 8.0f);
  struct Act {
    OpType op;
    float a, b;
    bool exact;
  };
  for (const Act& act : {Act{OpType::kRelu, 0, 0, true}, Act{OpType::kClip, 0.0f, 6.0f, true},
                         Act{OpType::kLeakyRelu, 0.1f, 0, true}, Act{OpType::kSigmoid, 0, 0, false},
                         Act{OpType::kHardSigmoid, 0.2f, 0.5f, false}, Act{OpType::kHardSwish, 0, 0, false}}) {
    Node n;
    n.name = "act";
    n.op = act.op;
    n.attrs.act_alpha = act.a;
    n.attrs.act_beta = act.b;
    auto [got, ref] = both(n, {x});
    if (act.exact) {
      EXPECT_EQ(got.data, ref.data) << op_name(act.op);
    } else {
      EXPECT_LE(nmse(got, ref), kMaxNmseTranscendental) << op_name(act.op);
    }
  }
  for (OpType op : {OpType::kAdd, OpType::kMul}) {
    Node n;
    n.name = "binary";
    n.op = op;
    for (const Shape& bs : {Shape{2, 3, 4, 5}, Shape{1, 3, 1, 1}, Shape{5}, Shape{2, 1, 4, 1}}) {
      auto [got, ref] = both(n, {x, random_tensor(rng, bs)});
      EXPECT_EQ(got.data, ref.data) << op_name(op) << " with " << shape_str(bs);
    }
  }
  {
    Node n;
    n.name = "concat";
    n.op = OpType::kConcat;
    // Not axis 0: a Concat over the batch is refused by both backends (each image must be
    // evaluated on its own; ImportErrors and Executor tests cover the refusal).
    for (int64_t axis : {1, 2, 3, -1}) {
      n.attrs.axis = axis;
      Shape s2 = x.shape;
      s2[axis < 0 ? 3 : axis] = 3;
      auto [got, ref] = both(n, {x, random_tensor(rng, s2), x});
      EXPECT_EQ(got.data, ref.data) << "Concat axis " << axis;
    }
  }
  {
    Node n;
    n.name = "flatten";
    n.op = OpType::kFlatten;
    n.attrs.axis = 1;
    auto [got, ref] = both(n, {x});
    EXPECT_EQ(got.shape, ref.shape);
    EXPECT_EQ(got.data, ref.data);
    Node r;
    r.name = "reshape";
    r.op = OpType::kReshape;
    r.attrs.shape = {0, -1, 5};
    auto [rg, rr] = both(r, {x});
    EXPECT_EQ(rg.shape, rr.shape);
    EXPECT_EQ(rg.data, rr.data);
  }
  {
    Node n;
    n.name = "softmax";
    n.op = OpType::kSoftmax;
    for (int64_t axis : {1, 3}) {
      n.attrs.axis = axis;
      auto [got, ref] = both(n, {x});
      EXPECT_LE(nmse(got, ref), kMaxNmseTranscendental) << "Softmax axis " << axis;
    }
  }
  {
    Node n;
    n.name = "pad";
    n.op = OpType::kPad;
    n.attrs.pad_amounts = {0, 1, 2, 3, 1, 0, 3, 2};
    for (int mode : {0, 1, 2}) {
      n.attrs.pad_mode = mode;
      n.attrs.pad_value = 0.25f;
      auto [got, ref] = both(n, {x});
      EXPECT_EQ(got.data, ref.data) << "Pad mode " << mode;
    }
  }
  {
    Node n;
    n.name = "bn";
    n.op = OpType::kBatchNorm;
    n.attrs.bn_scale = {0.5f, -1.25f, 2.0f};
    n.attrs.bn_shift = {0.1f, 0.0f, -3.0f};
    auto [got, ref] = both(n, {x});
    EXPECT_LE(nmse(got, ref), kMaxNmseAffine);
  }
}

// Device copies for a direct kernel call.
struct Dev {
  float* p = nullptr;
  explicit Dev(const Tensor& t) {
    cudaMalloc(&p, std::max<size_t>(1, t.data.size()) * sizeof(float));
    cudaMemcpy(p, t.ptr(), t.data.size() * sizeof(float), cudaMemcpyHostToDevice);
  }
  explicit Dev(size_t n) { cudaMalloc(&p, std::max<size_t>(1, n) * sizeof(float)); }
  ~Dev() { cudaFree(p); }
  Tensor get(const Shape& s) const {
    Tensor t(s);
    cudaMemcpy(t.ptr(), p, t.data.size() * sizeof(float), cudaMemcpyDeviceToHost);
    return t;
  }
};

// The session's residual Add + Relu/Clip kernel against the CPU's add_clamp, bit for bit,
// on sums that round, signed zeros (Clip(-0, 0, 6) keeps -0 on the CPU), infinities and NaN
// (Relu gives 0, Clip keeps the NaN; the device's NaN bits are its canonical ones, so a NaN
// matches any NaN).
TEST(CudaOps, AddClampMatchesCpuTwin) {
  REQUIRE_CUDA_DEVICE();
  std::mt19937 rng(88);
  const float inf = std::numeric_limits<float>::infinity();
  const size_t n = 100003;
  Tensor a = random_tensor(rng, {static_cast<int64_t>(n)}, -8.0f, 8.0f);
  Tensor b = random_tensor(rng, {static_cast<int64_t>(n)}, -8.0f, 8.0f);
  const float specials[][2] = {{-0.0f, 0.0f}, {0.0f, -0.0f}, {-0.0f, -0.0f}, {inf, 1.0f}, {-inf, 1.0f},
                               {1.0f, -1.0f}, {6.0f, 1e-7f}, {1.0f, 0x1p-24f}, {0.25f, 1e-8f},
                               {std::numeric_limits<float>::quiet_NaN(), 1.0f}};
  for (size_t i = 0; i < std::size(specials); ++i) a.data[i] = specials[i][0], b.data[i] = specials[i][1];
  Dev da(a), db(b), dy(n);
  for (int mode = 0; mode < 3; ++mode) {
    const bool relu = mode == 0;
    const float lo = mode == 1 ? 0.0f : -0.5f, hi = mode == 1 ? 6.0f : 0.25f;
    std::vector<float> want(n);
    add_clamp(a.ptr(), b.ptr(), want.data(), n, lo, hi, relu);
    cuda::add_clamp(da.p, db.p, dy.p, n, lo, hi, relu, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const Tensor got = dy.get(a.shape);
    size_t differ = 0, first = n;
    for (size_t i = 0; i < n; ++i) {
      const bool same = std::isnan(want[i]) ? std::isnan(got.data[i])
                                            : std::memcmp(&got.data[i], &want[i], sizeof(float)) == 0;
      if (!same && differ++ == 0) first = i;
    }
    EXPECT_EQ(differ, 0u) << "mode " << mode << ", first at " << first << ": " << a.data[first % n] << " + "
                          << b.data[first % n] << " gave " << got.data[first % n] << ", CPU "
                          << want[first % n];
  }
}

// The per-image metrics kernel against kernels/cpu/metrics.h: outcome bits (top-1 and top-5)
// equal to row_outcome() on rows full of ties and NaNs, labels outside the classes, rows
// wider than a warp; squared errors as squared_error_sum(); the top-1 count of reduce_rows.
TEST(CudaOps, RowMetricsMatchCpuTwin) {
  REQUIRE_CUDA_DEVICE();
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> level(0, 6);
  for (const size_t k : {size_t{1}, size_t{3}, size_t{10}, size_t{37}, size_t{1000}}) {
    const size_t n = 300;
    Tensor y(Shape{static_cast<int64_t>(n), static_cast<int64_t>(k)}), yq = y;
    for (size_t i = 0; i < y.data.size(); ++i) {
      y.data[i] = 0.5f * static_cast<float>(level(rng));
      const int l = level(rng);
      yq.data[i] = l == 6 && i % 7 == 0 ? std::nanf("") : 0.5f * static_cast<float>(l);  // few distinct: ties
    }
    std::vector<int32_t> labels(n);
    for (size_t r = 0; r < n; ++r) {
      labels[r] = r % 50 == 3 ? -1 : r % 50 == 4 ? static_cast<int32_t>(k) : static_cast<int32_t>(rng() % k);
    }
    const Dev dy(y), dq(yq);
    int32_t* dl = nullptr;
    double *dsq = nullptr, *dsum = nullptr;
    uint8_t* dflags = nullptr;
    int64_t* dcount = nullptr;
    const size_t tb = cuda::reduce_temp_bytes(n);
    void* temp = nullptr;
    ASSERT_EQ(cudaMalloc(&dl, n * sizeof(int32_t)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dsq, n * sizeof(double)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dflags, n), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dsum, sizeof(double)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&dcount, sizeof(int64_t)), cudaSuccess);
    ASSERT_EQ(cudaMalloc(&temp, std::max<size_t>(tb, 1)), cudaSuccess);
    cudaMemcpy(dl, labels.data(), n * sizeof(int32_t), cudaMemcpyHostToDevice);
    for (const bool with_q : {true, false}) {
      const Tensor& scored = with_q ? yq : y;
      cuda::row_metrics(dy.p, with_q ? dq.p : nullptr, dl, n, k, dsq, dflags, nullptr);
      cuda::reduce_rows(dsq, dflags, n, dsum, dcount, temp, tb, nullptr);
      std::vector<uint8_t> flags(n);
      std::vector<double> sq(n);
      int64_t count = -1;
      ASSERT_EQ(cudaMemcpy(flags.data(), dflags, n, cudaMemcpyDeviceToHost), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(sq.data(), dsq, n * sizeof(double), cudaMemcpyDeviceToHost), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(&count, dcount, sizeof(int64_t), cudaMemcpyDeviceToHost), cudaSuccess);
      std::vector<uint8_t> want(n);
      for (size_t r = 0; r < n; ++r) {
        want[r] = row_outcome(scored.ptr() + r * k, k, labels[r]);
        ASSERT_EQ(flags[r], want[r]) << "k " << k << " row " << r << " label " << labels[r];
        const double ref = with_q ? squared_error_sum(y.ptr() + r * k, yq.ptr() + r * k, 1, k)
                                  : squared_norm_sum(y.ptr() + r * k, 1, k);
        if (std::isnan(ref)) {
          EXPECT_TRUE(std::isnan(sq[r])) << "k " << k << " row " << r;
        } else {
          EXPECT_NEAR(sq[r], ref, 1e-12 * ref) << "k " << k << " row " << r;
        }
      }
      EXPECT_EQ(count, count_outcomes(want.data(), n, kTop1Bit)) << "k " << k;
      // Not vacuous: top-5 holds where top-1 does not. Not at k = 1000: with 7 levels about
      // 140 logits tie at the maximum, so top-5 is as rare as top-1 there.
      if (k > 5 && k < 100) EXPECT_GT(count_outcomes(want.data(), n, kTop5Bit), count) << "k " << k;
    }
    cudaFree(dl);
    cudaFree(dsq);
    cudaFree(dflags);
    cudaFree(dsum);
    cudaFree(dcount);
    cudaFree(temp);
  }
}

TEST(CudaOps, FakeQuantizeIsBitExactWithTies) {
  REQUIRE_CUDA_DEVICE();
  CpuBackend cpu;
  CudaBackend cuda{BackendOptions{}};
  auto cc = cpu.make_context();
  auto gc = cuda.make_context();
  const QuantParams p = choose_quant_params(-1.5f, 3.0f, 4, Scheme::kAsymmetric);
  Tensor x({1, 1, 1, 2 * (p.qmax - p.qmin + 4)});
  for (int64_t i = 0; i < x.numel(); ++i) x.data[i] = (static_cast<float>(i / 2 - 2 - p.zero_point) + 0.5f * (i % 2)) * p.scale;
  Tensor a, b;
  cuda.fake_quantize(*gc, x, p, a);
  cpu.fake_quantize(*cc, x, p, b);
  EXPECT_EQ(a.data, b.data);
}

// ---------------------------------------------------------------- fused fake-quant conv


// The unfused path of a backend: fake_quantize(x) -> conv/gemm with wq -> act -> fake_quantize.
Tensor unfused(const Backend& be, const Node& n, const Tensor& x, const Tensor& wq, const Tensor* bias,
               const QuantParams& qin, const Node* act, const QuantParams& qout) {
  auto ctx = be.make_context();
  Tensor xq, y, z;
  be.fake_quantize(*ctx, x, qin, xq);
  std::vector<const Tensor*> args = {&xq, &wq};
  if (bias) args.push_back(bias);
  be.run(*ctx, n, args, y);
  Tensor* out = &y;
  if (act) {
    std::vector<const Tensor*> aa = {&y};
    be.run(*ctx, *act, aa, z);
    out = &z;
  }
  be.fake_quantize(*ctx, *out, qout, *out);
  return nchw(*out);
}

// Counts elements one output step apart and fails on any further apart.
double one_step_fraction(const Tensor& got, const Tensor& ref, const QuantParams& q, const std::string& what) {
  EXPECT_EQ(got.shape, ref.shape) << what;
  size_t one = 0;
  for (size_t i = 0; i < ref.data.size(); ++i) {
    const double steps = std::abs(static_cast<double>(got.data[i]) - ref.data[i]) / q.scale;
    EXPECT_LE(steps, 1.0 + 1e-3) << what << ": element " << i << " got " << got.data[i] << ", want " << ref.data[i];
    if (steps > 0.5) ++one;
  }
  return ref.data.empty() ? 0.0 : static_cast<double>(one) / ref.data.size();
}

// Restores the process-wide fused-conv variant when a test that switches it ends.
struct VariantGuard {
  int saved = cuda::fq_conv_variant();
  ~VariantGuard() { cuda::set_fq_conv_variant(saved); }
};

// The fused-conv variants the CudaFakeQuantConv tests run: all, or variant 0 (the reference
// of the others) and those $QSWEEP_TEST_FQCONV_VARIANTS lists ("3 11"), which lets
// bench/gpu_check.sh find the variants that pass when one fails.
std::vector<int> variants_under_test() {
  std::vector<int> v;
  const char* env = std::getenv("QSWEEP_TEST_FQCONV_VARIANTS");
  if (env == nullptr || *env == '\0') {
    for (int i = 0; i < cuda::kFqConvVariants; ++i) v.push_back(i);
    return v;
  }
  v.push_back(0);
  std::istringstream in(env);
  int i;
  while (in >> i) {
    if (i < 0 || i >= cuda::kFqConvVariants) throw std::invalid_argument("QSWEEP_TEST_FQCONV_VARIANTS: no variant " + std::to_string(i));
    if (i != 0) v.push_back(i);
  }
  return v;
}

TEST(CudaFakeQuantConv, VariantChoiceIsChecked) {
  VariantGuard guard;
  EXPECT_THROW(cuda::set_fq_conv_variant(-1), std::invalid_argument);
  EXPECT_THROW(cuda::set_fq_conv_variant(cuda::kFqConvVariants), std::invalid_argument);
  for (int v = 0; v < cuda::kFqConvVariants; ++v) {
    cuda::set_fq_conv_variant(v);
    EXPECT_EQ(cuda::fq_conv_variant(), v);
  }
}

// Every variant of the kernel (cuda::kFqConvVariants) is checked: variant 0 and the variants
// that sum in another order (cuda::fq_conv_variant_keeps_order) against the unfused paths,
// the others bit for bit against variant 0 (same sums, same order).
TEST(CudaFakeQuantConv, MatchesUnfusedCudaAndCpuPaths) {
  REQUIRE_CUDA_DEVICE();
  VariantGuard guard;
  CpuBackend cpu;
  BackendOptions dnn_only;  // the unfused CUDA reference: cuDNN's convolutions
  dnn_only.own_convs = false;
  CudaBackend cuda{dnn_only};
  std::mt19937 rng(21);
  Worst worst{"fused conv: fraction one output step apart"};
  for (int t = 0; t < 52; ++t) {
    // Cases 36-39: dense 1x1 convolutions with 128+ output channels and 40-256 input channels
    // (3-16 reduction steps, past the pipeline's 3 stages), which variant 10 gives another tile.
    const bool wide_pointwise = t >= 36 && t < 40;
    // Cases 40-51: dense and grouped 2x2 and 3x3 convolutions with 16-64 channels per group
    // (a multiple of 16, half of them of 32), 20-200 outputs per group: the tap-major sums of
    // variants 11-13 on each of their three tiles, 8-36 reduction steps.
    const bool tap_major = t >= 40;
    const int kind = wide_pointwise ? 0 : tap_major ? t % 2 : t % 4;  // dense, grouped, depthwise, Gemm
    const bool is_gemm = kind == 3;
    const int64_t G = kind == 1 ? 2 : kind == 2 ? rand_int(rng, 2, 16) : 1;
    const int64_t C = kind == 2                ? G
                      : wide_pointwise         ? rand_int(rng, 40, 256)
                      : tap_major              ? G * 16 * rand_int(rng, 1, 4)
                                               : G * rand_int(rng, 1, 24);
    const int64_t O = kind == 2                ? G
                      : wide_pointwise         ? rand_int(rng, 128, 200)
                      : tap_major              ? G * (t % 3 == 0 ? rand_int(rng, 20, 63) : t % 3 == 1 ? rand_int(rng, 64, 127) : rand_int(rng, 128, 200))
                                               : G * rand_int(rng, 1, 140);
    const int64_t k = is_gemm || wide_pointwise ? 1 : tap_major ? rand_int(rng, 2, 3) : rand_int(rng, 1, 3), s = rand_int(rng, 1, 2);
    const int64_t d = is_gemm ? 1 : rand_int(rng, 1, 2);
    const int64_t p = t % 3 == 0 ? 0 : 1;
    const int64_t N = rand_int(rng, 1, 4);
    const int64_t max_hw = tap_major ? 20 : 14;
    const int64_t H = is_gemm ? 1 : rand_int(rng, (k - 1) * d + 1, max_hw), W = is_gemm ? 1 : rand_int(rng, (k - 1) * d + 1, max_hw);
    Node n;
    Tensor x, w;
    if (is_gemm) {
      n.name = "gemm";
      n.op = OpType::kGemm;
      n.attrs.trans_b = true;
      x = random_tensor(rng, {N * 7, C}, -2.0f, 3.0f);
      w = random_tensor(rng, {O, C}, -0.5f, 0.5f);
    } else {
      n = conv_node(k, s, {p, p, p, p}, d, G);
      x = random_tensor(rng, {N, C, H, W}, -2.0f, 3.0f);
      w = random_tensor(rng, {O, C / G, k, k}, -0.5f, 0.5f);
    }
    // Weights fake-quantized once, as the grid does (4 bits, per tensor).
    float lo, hi;
    min_max(w.ptr(), w.data.size(), &lo, &hi);
    const QuantParams qw = choose_quant_params(lo, hi, 4, Scheme::kAsymmetric);
    fake_quantize_per_tensor(w.ptr(), w.ptr(), w.data.size(), qw);
    const Tensor bias = random_tensor(rng, {O}, -0.2f, 0.2f);
    const QuantParams qin = choose_quant_params(-2.0f, 3.0f, 8, Scheme::kAsymmetric);
    Node act;
    act.name = "act";
    act.op = t % 2 ? OpType::kRelu : OpType::kClip;
    act.attrs.act_alpha = 0.0f;
    act.attrs.act_beta = 6.0f;
    const bool with_act = t % 5 != 4;
    // The output range from the unfused float result, as calibration would see it.
    const QuantParams qout = choose_quant_params(with_act ? 0.0f : -4.0f, 6.0f, 8, Scheme::kAsymmetric);

    const Tensor ref_cuda = unfused(cuda, n, x, w, &bias, qin, with_act ? &act : nullptr, qout);
    const Tensor ref_cpu = unfused(cpu, n, x, w, &bias, qin, with_act ? &act : nullptr, qout);

    Dev dx(x), dw(w), db(bias), dy(ref_cpu.data.size());
    cuda::FqConv f;
    f.x = dx.p;
    f.w = dw.p;
    f.bias = db.p;
    f.y = dy.p;
    if (is_gemm) {
      f.N = x.shape[0], f.C = C, f.H = f.W = 1, f.O = O, f.OH = f.OW = 1;
    } else {
      const SpatialPlan sp = plan_spatial(n.attrs, H, W);
      f.N = N, f.C = C, f.H = H, f.W = W, f.O = O, f.KH = f.KW = k, f.OH = sp.out_h, f.OW = sp.out_w;
      f.stride_h = f.stride_w = s, f.pad_t = f.pad_l = p, f.dil_h = f.dil_w = d, f.groups = G;
    }
    f.quantize_input = true;
    f.input = qin;
    f.has_activation = with_act;
    f.act = act.op == OpType::kRelu ? Activation::kRelu : Activation::kClip;
    f.act_alpha = 0.0f;
    f.act_beta = 6.0f;
    f.quantize_output = true;
    f.output = qout;
    const std::string what = "case " + std::to_string(t);
    // The tap-major cases reach variants 11-13's kernel (else those variants would quietly
    // run variant 10's and pass).
    if (tap_major) EXPECT_TRUE(cuda::tap_major_applies(f)) << what;
    Tensor first;
    for (int v : variants_under_test()) {
      cuda::set_fq_conv_variant(v);
      ASSERT_EQ(cudaMemset(dy.p, 0xff, ref_cpu.data.size() * sizeof(float)), cudaSuccess);  // NaNs: no stale pass
      cuda::fq_conv2d(f, nullptr);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      const Tensor got = dy.get(ref_cpu.shape);
      if (v > 0 && cuda::fq_conv_variant_keeps_order(v)) {
        EXPECT_TRUE(std::memcmp(got.data.data(), first.data.data(), got.data.size() * sizeof(float)) == 0)
            << what << ": variant " << v << " differs from variant 0";
        continue;
      }
      if (v == 0) first = got;
      const std::string wv = what + ", variant " + std::to_string(v);
      const double a = one_step_fraction(got, ref_cuda, qout, wv + " vs CUDA unfused");
      const double b = one_step_fraction(got, ref_cpu, qout, wv + " vs CPU");
      EXPECT_LE(a, kMaxOneStepFraction) << wv;
      EXPECT_LE(b, kMaxOneStepFraction) << wv;
      worst.add(std::max(a, b));
    }
  }
}

// Runs f (its x, w, y set here from the host tensors) under every variant: variant 0 and the
// variants that sum in another order against a double-precision loop over the fake-quantized
// input with zero padding (padding is not quantized), every other variant bit for bit
// against variant 0. f has no dilation and one group.
void check_variants_against_reference(cuda::FqConv f, const Tensor& x, const Tensor& w, const std::string& what) {
  Tensor xq(x.shape);
  fake_quantize_per_tensor(x.ptr(), xq.ptr(), x.data.size(), f.input);
  const int64_t N = f.N, C = f.C, H = f.H, W = f.W, O = f.O, KH = f.KH, KW = f.KW, OH = f.OH, OW = f.OW;
  std::vector<float> want(static_cast<size_t>(N * O * OH * OW));
  for (int64_t n = 0; n < N; ++n)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t oh = 0; oh < OH; ++oh)
        for (int64_t ow = 0; ow < OW; ++ow) {
          double acc = 0.0;
          for (int64_t c = 0; c < C; ++c)
            for (int64_t kh = 0; kh < KH; ++kh)
              for (int64_t kw = 0; kw < KW; ++kw) {
                const int64_t ih = oh * f.stride_h - f.pad_t + kh, iw = ow * f.stride_w - f.pad_l + kw;
                if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                acc += static_cast<double>(xq.data[((n * C + c) * H + ih) * W + iw]) *
                       w.data[((o * C + c) * KH + kh) * KW + kw];
              }
          want[((n * O + o) * OH + oh) * OW + ow] = static_cast<float>(acc);
        }
  Dev dx(x), dw(w), dy(want.size());
  f.x = dx.p, f.w = dw.p, f.y = dy.p;
  Tensor first;
  for (int v : variants_under_test()) {
    cuda::set_fq_conv_variant(v);
    ASSERT_EQ(cudaMemset(dy.p, 0xff, want.size() * sizeof(float)), cudaSuccess);
    cuda::fq_conv2d(f, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const Tensor got = dy.get({N, O, OH, OW});
    if (v == 0 || !cuda::fq_conv_variant_keeps_order(v)) {
      if (v == 0) first = got;
      double worst = 0.0;
      for (size_t i = 0; i < want.size(); ++i) {
        worst = std::max(worst, std::abs(static_cast<double>(got.data[i]) - want[i]) / (1.0 + std::abs(want[i])));
      }
      EXPECT_LE(worst, 1e-4) << what << ": variant " << v << " against the double-precision reference";
    } else {
      EXPECT_EQ(std::memcmp(got.ptr(), first.ptr(), want.size() * sizeof(float)), 0) << what << ": variant " << v;
    }
  }
}

// An input quantizer that does not map 0 to 0 (a zero point outside [qmin, qmax], which
// choose_quant_params() never makes): padding must stay 0, not become the quantizer's value,
// so the pipelined variants (which quantize zero-filled padding) fall back, and every variant
// still equals variant 0 and the unfused CPU path bit for bit.
TEST(CudaFakeQuantConv, QuantizerWithoutZeroKeepsPaddingZero) {
  REQUIRE_CUDA_DEVICE();
  VariantGuard guard;
  std::mt19937 rng(5);
  const int64_t N = 2, C = 8, H = 9, W = 11, O = 70;
  const Tensor x = random_tensor(rng, {N, C, H, W}, 0.5f, 3.0f);
  const Tensor w = random_tensor(rng, {O, C, 3, 3}, -0.5f, 0.5f);
  QuantParams q = choose_quant_params(0.0f, 3.0f, 8, Scheme::kAsymmetric);
  q.zero_point = q.qmin - 20;  // fq(0) = 20 * scale
  {
    const float zero = 0.0f;
    float y = 0.0f;
    fake_quantize_per_tensor(&zero, &y, 1, q);
    ASSERT_GT(y, 0.0f) << "the test needs a quantizer that moves 0";
  }
  cuda::FqConv f;
  f.N = N, f.C = C, f.H = H, f.W = W, f.O = O, f.KH = f.KW = 3, f.OH = H, f.OW = W;
  f.pad_t = f.pad_l = 1;
  f.quantize_input = true;
  f.input = q;
  check_variants_against_reference(f, x, w, "3x3, padding 1, a quantizer that moves 0");
}

// A 1x1 conv whose last output row and column lie in bottom/right padding (ONNX pads
// [0, 0, 1, 1]): the pointwise fast path of the pipelined variants must not take it.
TEST(CudaFakeQuantConv, PointwiseWithBottomRightPadding) {
  REQUIRE_CUDA_DEVICE();
  VariantGuard guard;
  std::mt19937 rng(6);
  for (int64_t stride : {1, 2}) {
    const int64_t N = 3, C = 6, H = 8, W = 10, O = 40;
    const Tensor x = random_tensor(rng, {N, C, H, W}, -2.0f, 3.0f);
    const Tensor w = random_tensor(rng, {O, C, 1, 1}, -0.5f, 0.5f);
    cuda::FqConv f;
    f.N = N, f.C = C, f.H = H, f.W = W, f.O = O, f.KH = f.KW = 1;
    f.stride_h = f.stride_w = stride;
    f.OH = (H + 1 - 1) / stride + 1, f.OW = (W + 1 - 1) / stride + 1;  // pads: bottom 1, right 1
    ASSERT_GE((f.OH - 1) * stride, H);  // the last output row reads padding
    f.quantize_input = true;
    f.input = choose_quant_params(-2.0f, 3.0f, 8, Scheme::kAsymmetric);
    check_variants_against_reference(f, x, w, "1x1, stride " + std::to_string(stride) + ", padding bottom/right");
  }
}

// Tap-major shapes (channels a multiple of 16, kernels larger than 1x1) on each tile of
// variants 11-13, with padding on every side and stride 2: against the double-precision
// loop, with a quantizer whose range holds 0 (the pipelined kernels quantize zero-filled
// padding) and one that moves 0 (they must fall back).
TEST(CudaFakeQuantConv, TapMajorShapesMatchTheReference) {
  REQUIRE_CUDA_DEVICE();
  VariantGuard guard;
  std::mt19937 rng(7);
  struct Case { int64_t N, C, H, W, O, k, stride, pad; };
  for (const Case c : {Case{2, 32, 9, 11, 70, 3, 1, 1}, Case{3, 64, 12, 10, 130, 3, 2, 1}, Case{2, 48, 7, 13, 20, 3, 1, 1},
                       Case{1, 16, 16, 16, 257, 2, 1, 0}, Case{2, 96, 6, 6, 64, 3, 1, 2}}) {
    for (bool moves_zero : {false, true}) {
      const Tensor x = random_tensor(rng, {c.N, c.C, c.H, c.W}, -2.0f, 3.0f);
      const Tensor w = random_tensor(rng, {c.O, c.C, c.k, c.k}, -0.5f, 0.5f);
      cuda::FqConv f;
      f.N = c.N, f.C = c.C, f.H = c.H, f.W = c.W, f.O = c.O, f.KH = f.KW = c.k;
      f.stride_h = f.stride_w = c.stride, f.pad_t = f.pad_l = c.pad;
      f.OH = (c.H + 2 * c.pad - c.k) / c.stride + 1, f.OW = (c.W + 2 * c.pad - c.k) / c.stride + 1;
      f.quantize_input = true;
      f.input = choose_quant_params(-2.0f, 3.0f, 8, Scheme::kAsymmetric);
      if (moves_zero) f.input.zero_point = f.input.qmin - 20;
      EXPECT_EQ(cuda::tap_major_applies(f), !moves_zero) << "C " << c.C << ", O " << c.O;
      check_variants_against_reference(f, x, w,
                                       "C " + std::to_string(c.C) + ", O " + std::to_string(c.O) + ", " +
                                           std::to_string(c.k) + "x" + std::to_string(c.k) + ", stride " +
                                           std::to_string(c.stride) + (moves_zero ? ", a quantizer that moves 0" : ""));
    }
  }
}

// Runs f (input quantizer q, its x, w and y set here) and expects the output to equal the CPU
// fake-quant of x bit for bit: f's weights make each output one input value times 1.
void expect_input_quantizer_output(cuda::FqConv f, const Tensor& x, const Tensor& w, const QuantParams& q,
                                   const std::string& what) {
  Dev dx(x), dw(w), dy(x.data.size());
  f.x = dx.p, f.w = dw.p, f.y = dy.p;
  f.quantize_input = true;
  f.input = q;
  cuda::fq_conv2d(f, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  Tensor want = x;
  fake_quantize_per_tensor(x.ptr(), want.ptr(), x.data.size(), q);
  EXPECT_EQ(dy.get(x.shape).data, want.data) << what;
}

// With weights of 1 and a 1x1 kernel, the fused kernel's output is its input quantizer's
// output: it must equal the CPU fake-quant bit for bit, on exact ties too (dense and
// depthwise kernels).
TEST(CudaFakeQuantConv, InputQuantizationIsBitExactOnTies) {
  REQUIRE_CUDA_DEVICE();
  VariantGuard guard;
  const QuantParams q = choose_quant_params(-1.0f, 2.5f, 5, Scheme::kAsymmetric);
  for (int variant : variants_under_test())
  for (int64_t groups : {1, 4}) {
    cuda::set_fq_conv_variant(variant);
    const int64_t C = 4, O = 4, HW = 2 * (q.qmax - q.qmin + 6);
    Tensor x({1, C, 1, HW});
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t i = 0; i < HW; ++i) {
        x.data[c * HW + i] = (static_cast<float>(i / 2 - 3 - q.zero_point) + 0.5f * (i % 2) + 0.25f * (c == 3)) * q.scale;
      }
    }
    // Dense: the identity as a 4x4 1x1 convolution; depthwise: one weight of 1 per channel.
    Tensor w(groups == 1 ? Shape{O, C, 1, 1} : Shape{O, 1, 1, 1});
    for (int64_t o = 0; o < O; ++o) w.data[groups == 1 ? o * C + o : o] = 1.0f;
    cuda::FqConv f;
    f.N = 1, f.C = C, f.H = 1, f.W = HW, f.O = O, f.OH = 1, f.OW = HW, f.groups = groups;
    expect_input_quantizer_output(f, x, w, q, "groups " + std::to_string(groups) + ", variant " + std::to_string(variant));
  }
  // A 3x3 kernel, padding 1, 16 channels (the tap-major sums of variants 11-13): the
  // identity as the centre tap, every other weight 0, so each output is one product and
  // exact sums of zeros in any order.
  for (int variant : variants_under_test()) {
    cuda::set_fq_conv_variant(variant);
    const int64_t C = 16, H = 3, W = (q.qmax - q.qmin + 6) * 2 / 3 + 1;
    Tensor x({1, C, H, W});
    for (int64_t i = 0; i < x.numel(); ++i) {
      x.data[i] = (static_cast<float>(i / 2 % (H * W) - 3 - q.zero_point) + 0.5f * (i % 2) + 0.25f * (i / (H * W) == 3)) * q.scale;
    }
    Tensor w({C, C, 3, 3});
    for (int64_t o = 0; o < C; ++o) w.data[((o * C + o) * 3 + 1) * 3 + 1] = 1.0f;
    cuda::FqConv f;
    f.N = 1, f.C = C, f.H = H, f.W = W, f.O = C, f.KH = f.KW = 3, f.OH = H, f.OW = W, f.pad_t = f.pad_l = 1;
    expect_input_quantizer_output(f, x, w, q, "3x3, variant " + std::to_string(variant));
  }
}

// ---------------------------------------------------------------- weight ranges on the device

// The CUB per-channel min/max and the per-channel fake-quant against their CPU twins, on
// (outer, channels, inner) layouts of conv and Gemm weights, NaNs and infinities included.
TEST(CudaOps, PerChannelRangesAndFakeQuantMatchCpu) {
  REQUIRE_CUDA_DEVICE();
  std::mt19937 rng(404);
  const float nan = std::numeric_limits<float>::quiet_NaN(), inf = std::numeric_limits<float>::infinity();
  struct Layout { size_t outer, channels, inner; };
  const Layout layouts[] = {{1, 64, 3 * 3 * 3}, {1, 7, 1000}, {300, 10, 1}, {5, 3, 17}, {1, 1, 200000}, {1, 2, 1}};
  for (const Layout& l : layouts) {
    const size_t n = l.outer * l.channels * l.inner;
    Tensor w = random_tensor(rng, {static_cast<int64_t>(n)}, -0.7f, 0.9f);
    if (n > 40) {
      w.data[3] = nan;
      w.data[n / 2] = -0.0f;
      w.data[n - 5] = inf;
    }
    std::vector<float> lo(l.channels), hi(l.channels);
    min_max_per_channel(w.ptr(), l.outer, l.channels, l.inner, lo.data(), hi.data());
    Dev dw(w), dr(2 * l.channels);
    cuda::min_max_per_channel(dw.p, l.outer, l.channels, l.inner, dr.p, dr.p + l.channels, nullptr);
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const Tensor r = dr.get({static_cast<int64_t>(2 * l.channels)});
    for (size_t c = 0; c < l.channels; ++c) {
      EXPECT_EQ(r.data[c], lo[c]) << "channel " << c << " of " << l.channels << " x " << l.inner;
      EXPECT_EQ(r.data[l.channels + c], hi[c]) << "channel " << c << " of " << l.channels << " x " << l.inner;
    }
    for (Scheme scheme : {Scheme::kAsymmetric, Scheme::kSymmetric}) {
      std::vector<QuantParams> qp(l.channels);
      for (size_t c = 0; c < l.channels; ++c) {
        qp[c] = choose_quant_params(std::isfinite(lo[c]) ? lo[c] : -1.0f, std::isfinite(hi[c]) ? hi[c] : 1.0f,
                                    3 + static_cast<int>(c % 6), scheme);
      }
      Tensor want(w.shape);
      fake_quantize_per_channel(w.ptr(), want.ptr(), l.outer, l.channels, l.inner, qp.data());
      QuantParams* dp = nullptr;
      ASSERT_EQ(cudaMalloc(&dp, qp.size() * sizeof(QuantParams)), cudaSuccess);
      cudaMemcpy(dp, qp.data(), qp.size() * sizeof(QuantParams), cudaMemcpyHostToDevice);
      Dev dy(n);
      cuda::fake_quantize_per_channel(dw.p, dy.p, l.outer, l.channels, l.inner, dp, nullptr);
      ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
      cudaFree(dp);
      const Tensor got = dy.get(w.shape);
      EXPECT_EQ(std::memcmp(got.ptr(), want.ptr(), n * sizeof(float)), 0) << l.channels << " x " << l.inner;
    }
  }
}

// The device's min/max and NaN test against the host's: NaNs skipped by the one and found
// by the other, at the start, the middle and the end of vectors of several sizes.
TEST(CudaOps, MinMaxAndAnyNanMatchCpu) {
  REQUIRE_CUDA_DEVICE();
  std::mt19937 rng(405);
  for (size_t n : {size_t{1}, size_t{31}, size_t{1000}, size_t{1} << 20}) {
    for (int at : {-1, 0, 1, 2}) {  // no NaN, or one at the start / middle / end
      Tensor x = random_tensor(rng, {static_cast<int64_t>(n)}, -3.0f, 2.0f);
      if (at >= 0 && n > 1) x.data[at == 0 ? 0 : at == 1 ? n / 2 : n - 1] = std::numeric_limits<float>::quiet_NaN();
      float lo, hi, dlo, dhi;
      min_max(x.ptr(), n, &lo, &hi);
      Dev dx(x);
      cuda::min_max(dx.p, n, &dlo, &dhi, nullptr);
      EXPECT_EQ(dlo, lo) << n << " values, NaN at " << at;
      EXPECT_EQ(dhi, hi) << n << " values, NaN at " << at;
      EXPECT_EQ(cuda::any_nan(dx.p, n, nullptr), any_nan(x.ptr(), n)) << n << " values, NaN at " << at;
      EXPECT_EQ(any_nan(x.ptr(), n), at >= 0 && n > 1);
    }
  }
}

// A session makes min/max-ranged weights itself from the float weights it holds (ranges
// reduced on the device): bit for bit the host's quantize_weights(), for every layer of both
// shipped models, per tensor and per channel, both schemes, several bit-widths.
TEST(CudaSession, WeightsMadeOnTheDeviceEqualTheHosts) {
  REQUIRE_CUDA_DEVICE();
  CudaBackend cuda{BackendOptions{}};
  int checked = 0;
  for (const auto& m : testing::shipped_models()) {
    const Graph g = import_onnx(m.onnx);
    auto session = cuda.make_session(g);
    // A session knows a quantization by its address: every one stays alive (and distinct)
    // for the session's life, as the grids keep theirs.
    std::deque<QuantizedWeights> hosts;
    std::deque<LayerQuantization> quants;
    ASSERT_NE(session, nullptr);
    for (const Layer& L : g.layers) {
      for (int bits : {3, 5, 8}) {
        for (Scheme scheme : {Scheme::kAsymmetric, Scheme::kSymmetric}) {
          for (bool per_channel : {false, true}) {
            QuantSpec spec;
            spec.scheme = scheme;
            spec.granularity = per_channel ? Granularity::kPerChannel : Granularity::kPerTensor;
            const QuantizedWeights& host = hosts.emplace_back(quantize_weights(g, L, spec, bits));
            LayerQuantization& with = quants.emplace_back();
            LayerQuantization& without = quants.emplace_back();
            with.weights = without.weights = &host.weights;
            with.recipe = WeightRecipe{bits, scheme, per_channel};
            const std::pair<int, const LayerQuantization*> qs[] = {{L.index, &with}, {L.index, &without}};
            session->prepare(qs);
            const Tensor made = session->prepared_weights(L.index, &with);
            const Tensor uploaded = session->prepared_weights(L.index, &without);
            ASSERT_EQ(made.shape, host.weights.shape) << m.name << " " << L.name;
            EXPECT_EQ(std::memcmp(made.ptr(), host.weights.ptr(), made.data.size() * sizeof(float)), 0)
                << m.name << " " << L.name << " " << bits << " bits, scheme " << static_cast<int>(scheme)
                << (per_channel ? ", per channel" : ", per tensor");
            EXPECT_EQ(uploaded.data, host.weights.data) << m.name << " " << L.name;
            ++checked;
          }
        }
      }
    }
  }
  EXPECT_GT(checked, 100);
}

// ---------------------------------------------------------------- whole grids

struct GridSetup {
  Graph g;
  Config cfg;
  Dataset calib, eval;
  Normalization norm;
};

bool load_setup(int model, GridSetup& s, std::string* why) {
  if (!std::filesystem::exists(kFashionMnistDir)) {
    *why = "dataset-fashion-mnist is not installed";
    return false;
  }
  const auto models = testing::shipped_models();
  if (static_cast<size_t>(model) >= models.size()) {
    *why = "model not shipped";
    return false;
  }
  s.g = import_onnx(models[model].onnx);
  s.calib = load_idx_split(kFashionMnistDir, "train");
  s.eval = load_idx_split(kFashionMnistDir, "test");
  s.norm = Normalization{{0.2860f}, {0.3530f}};
  return true;
}

GridResult grid_on(const Backend& be, const GridSetup& s, const ActivationRanges& r, int64_t count, bool naive,
                   int64_t batch) {
  Executor exec(s.g, be);
  GridOptions o;
  o.batch_size = batch;
  o.threads = 0;
  o.threads = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  o.naive = naive;
  o.progress = false;
  return run_layerwise_grid(exec, s.eval, s.norm, count, r, resolve_layer_specs(s.g, s.cfg.quant), s.cfg.quant.weight_bits, o);
}

class CudaGrid : public ::testing::TestWithParam<int> {};

TEST_P(CudaGrid, EveryCellMatchesTheCpuBackend) {
  REQUIRE_CUDA_DEVICE();
  GridSetup s;
  std::string why;
  if (!load_setup(GetParam(), s, &why)) GTEST_SKIP() << why;
  CpuBackend cpu;
  CudaBackend cuda{BackendOptions{}};
  Executor cpu_exec(s.g, cpu);
  const ActivationRanges r = calibrate(cpu_exec, s.calib, s.norm, 512, 256, 8);
  const GridResult a = grid_on(cpu, s, r, s.eval.count, false, 250);
  const GridResult b = grid_on(cuda, s, r, s.eval.count, false, 500);
  ASSERT_EQ(a.cells.size(), b.cells.size());
  EXPECT_LE(std::abs(a.float_top1() - b.float_top1()), kMaxTop1Points);
  EXPECT_LE(std::abs(a.float_top5() - b.float_top5()), kMaxTop1Points);
  double worst_top1 = 0.0, worst_noise = 0.0;
  for (size_t c = 0; c < a.cells.size(); ++c) {
    const double dt = std::abs(a.top1(a.cells[c]) - b.top1(b.cells[c]));
    const double dn = std::abs(a.cells[c].noise_sum - b.cells[c].noise_sum) / std::max(a.cells[c].noise_sum, 1e-30);
    EXPECT_LE(dt, kMaxTop1Points) << "cell " << c;
    EXPECT_LE(std::abs(a.top5(a.cells[c]) - b.top5(b.cells[c])), kMaxTop1Points) << "cell " << c << " (top-5)";
    EXPECT_LE(dn, kMaxNoiseRelative) << "cell " << c;
    worst_top1 = std::max(worst_top1, dt);
    worst_noise = std::max(worst_noise, dn);
  }
  std::printf("[ grid ] %zu cells x %lld images: CPU %.2f s, CUDA %.2f s; worst top-1 diff %.3f points, worst noise "
              "diff %.3g relative\n",
              a.cells.size(), static_cast<long long>(a.images), a.seconds, b.seconds, worst_top1, worst_noise);
}

TEST_P(CudaGrid, OnePassEqualsNaiveBitForBit) {
  REQUIRE_CUDA_DEVICE();
  GridSetup s;
  std::string why;
  if (!load_setup(GetParam(), s, &why)) GTEST_SKIP() << why;
  s.cfg.quant.weight_bits = {3, 8};
  CudaBackend cuda{BackendOptions{}};
  Executor exec(s.g, cuda);
  const ActivationRanges r = calibrate(exec, s.calib, s.norm, 512, 256, 1);
  const GridResult a = grid_on(cuda, s, r, 1000, false, 300);
  const GridResult b = grid_on(cuda, s, r, 1000, true, 300);
  ASSERT_EQ(a.cells.size(), b.cells.size());
  EXPECT_EQ(a.float_correct, b.float_correct);
  EXPECT_EQ(a.output_energy, b.output_energy);
  for (size_t c = 0; c < a.cells.size(); ++c) {
    EXPECT_EQ(a.cells[c].noise_sum, b.cells[c].noise_sum) << "cell " << c;
    EXPECT_EQ(a.cells[c].correct, b.cells[c].correct) << "cell " << c;
    EXPECT_EQ(a.cells[c].correct_images, b.cells[c].correct_images) << "cell " << c;
  }
}

TEST_P(CudaGrid, DeviceCalibrationMatchesCpu) {
  REQUIRE_CUDA_DEVICE();
  GridSetup s;
  std::string why;
  if (!load_setup(GetParam(), s, &why)) GTEST_SKIP() << why;
  CpuBackend cpu;
  CudaBackend cuda{BackendOptions{}};
  Executor ce(s.g, cpu), ge(s.g, cuda);
  const ActivationRanges a = calibrate(ce, s.calib, s.norm, 512, 128, 4);
  const ActivationRanges b = calibrate(ge, s.calib, s.norm, 512, 128, 1);
  size_t seen = 0;
  for (size_t v = 0; v < a.lo.size(); ++v) {
    if (!std::isfinite(a.lo[v])) continue;
    ++seen;
    const double tol = 1e-5 * std::max({1.0, static_cast<double>(std::abs(a.lo[v])), static_cast<double>(std::abs(a.hi[v]))});
    EXPECT_NEAR(a.lo[v], b.lo[v], tol) << "value " << s.g.values[v].name;
    EXPECT_NEAR(a.hi[v], b.hi[v], tol) << "value " << s.g.values[v].name;
  }
  EXPECT_GT(seen, s.g.layers.size());
}

// A network that is NaN on one calibration image only (inf - inf where the pixel is bright)
// is refused by the device's calibration as by the host's (Calibration.PartlyNan... in
// layerwise_test.cpp), naming the same layer input.
TEST(CudaSession, PartlyNanCalibrationIsRefused) {
  REQUIRE_CUDA_DEVICE();
  const Graph g = testing::partly_nan_network();
  const Dataset d = testing::partly_nan_images();
  CudaBackend cuda{BackendOptions{}};
  Executor exec(g, cuda);
  const Normalization norm{{0.0f}, {0.1f}};
  EXPECT_NO_THROW(calibrate(exec, d, norm, 5, 2, 1));
  try {
    calibrate(exec, d, norm, 8, 2, 1);
    ADD_FAILURE() << "a network that is NaN on image 5 was calibrated on the device";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("the input of layer 0 'conv' ('s') is NaN on some of them"),
              std::string::npos)
        << e.what();
  }
}

TEST_P(CudaGrid, AutoBatchSizeFitsAndIsBounded) {
  REQUIRE_CUDA_DEVICE();
  GridSetup s;
  std::string why;
  if (!load_setup(GetParam(), s, &why)) GTEST_SKIP() << why;
  CudaBackend cuda{BackendOptions{}};
  auto session = cuda.make_session(s.g);
  const int64_t b = session->max_batch(4096);
  EXPECT_GE(b, 1);
  EXPECT_LE(b, 4096);
  std::printf("[ auto batch ] %lld images on %s\n", static_cast<long long>(b), cuda.device_name().c_str());
}

// The grid does not depend on the batch size beyond the CPU-vs-CUDA tolerances: cuDNN and
// cuBLAS may pick other algorithms (other summation orders) for other batch sizes, so the
// two grids are compared with the tolerances of the backend comparison, and the test reports
// whether they happen to be equal bit for bit.
TEST_P(CudaGrid, BatchSizeMovesNoCellBeyondTheTolerances) {
  REQUIRE_CUDA_DEVICE();
  GridSetup s;
  std::string why;
  if (!load_setup(GetParam(), s, &why)) GTEST_SKIP() << why;
  s.cfg.quant.weight_bits = {3, 6, 8};
  CudaBackend cuda{BackendOptions{}};
  Executor exec(s.g, cuda);
  const ActivationRanges r = calibrate(exec, s.calib, s.norm, 512, 256, 1);
  const GridResult a = grid_on(cuda, s, r, 4000, false, 1000);
  const GridResult b = grid_on(cuda, s, r, 4000, false, 37);  // 109 batches, the last one of 4
  ASSERT_EQ(a.cells.size(), b.cells.size());
  EXPECT_LE(std::abs(a.float_top1() - b.float_top1()), kMaxTop1Points);
  size_t identical = 0;
  double worst_top1 = 0.0, worst_noise = 0.0;
  for (size_t c = 0; c < a.cells.size(); ++c) {
    const double dt = std::abs(a.top1(a.cells[c]) - b.top1(b.cells[c]));
    const double dn = std::abs(a.cells[c].noise_sum - b.cells[c].noise_sum) / std::max(a.cells[c].noise_sum, 1e-30);
    EXPECT_LE(dt, kMaxTop1Points) << "cell " << c;
    EXPECT_LE(dn, kMaxNoiseRelative) << "cell " << c;
    identical += a.cells[c].noise_sum == b.cells[c].noise_sum && a.cells[c].correct == b.cells[c].correct;
    worst_top1 = std::max(worst_top1, dt);
    worst_noise = std::max(worst_noise, dn);
  }
  std::printf("[ batch size ] 1000 vs 37 images per batch: %zu of %zu cells bit for bit equal; worst top-1 diff %.3f "
              "points, worst noise diff %.3g relative\n",
              identical, a.cells.size(), worst_top1, worst_noise);
}

// Whole-network plans (the additivity and comparison studies' forwards): several layers
// quantized at once, CUDA against CPU.
TEST_P(CudaGrid, NetworkPlansMatchTheCpuBackend) {
  REQUIRE_CUDA_DEVICE();
  GridSetup s;
  std::string why;
  if (!load_setup(GetParam(), s, &why)) GTEST_SKIP() << why;
  CpuBackend cpu;
  CudaBackend cuda{BackendOptions{}};
  Executor ce(s.g, cpu), ge(s.g, cuda);
  const ActivationRanges r = calibrate(ce, s.calib, s.norm, 512, 256, 8);
  const auto specs = resolve_layer_specs(s.g, s.cfg.quant);
  const size_t L = s.g.layers.size();
  std::vector<std::unique_ptr<QuantizedLayer>> q4, q8;
  for (size_t l = 0; l < L; ++l) {
    q4.push_back(quantize_layer(ce, static_cast<int>(l), specs[l], 4, r, nullptr, 256, 1));
    q8.push_back(quantize_layer(ce, static_cast<int>(l), specs[l], 8, r, nullptr, 256, 1));
  }
  std::vector<QuantPlan> plans(3, QuantPlan(L, nullptr));
  for (size_t l = 0; l < L; ++l) {
    plans[0][l] = &q8[l]->q;                          // every layer at 8 bits
    plans[1][l] = l % 2 ? &q4[l]->q : &q8[l]->q;      // alternating 4 / 8
    if (l == 0 || l + 1 == L) plans[2][l] = &q4[l]->q;  // first and last at 4
  }
  GridOptions o;
  o.batch_size = 500;
  o.threads = 8;
  o.progress = false;
  const GridResult a = run_network_plans(ce, s.eval, s.norm, 5000, plans, o, "cpu");
  const GridResult b = run_network_plans(ge, s.eval, s.norm, 5000, plans, o, "cuda");
  ASSERT_EQ(a.cells.size(), b.cells.size());
  EXPECT_LE(std::abs(a.float_top1() - b.float_top1()), kMaxTop1Points);
  for (size_t p = 0; p < plans.size(); ++p) {
    // 5,000 images: one image is 0.02 points, so 0.05 allows two flips.
    EXPECT_LE(std::abs(a.top1(a.cells[p]) - b.top1(b.cells[p])), kMaxTop1Points) << "plan " << p;
    EXPECT_LE(std::abs(a.cells[p].noise_sum - b.cells[p].noise_sum) / a.cells[p].noise_sum, kMaxNoiseRelative) << "plan " << p;
  }
}

// Empirical bias correction on the device (DeviceSession::bias_sums: the layer node in the
// fused kernel, per-channel sums on the device) against the CPU backend's host path and the
// CUDA backend's host path (QSWEEP_HOST_BIAS_CORRECTION=1), for every layer at 3 and 8 bits.
// Not bit for bit: the float inputs and the conv sums are rounded by other kernels.
TEST_P(CudaGrid, BiasCorrectionOnTheDeviceMatchesTheHostPaths) {
  REQUIRE_CUDA_DEVICE();
  GridSetup s;
  std::string why;
  if (!load_setup(GetParam(), s, &why)) GTEST_SKIP() << why;
  CpuBackend cpu;
  CudaBackend cuda{BackendOptions{}};
  Executor ce(s.g, cpu), ge(s.g, cuda);
  const ActivationRanges r = calibrate(ce, s.calib, s.norm, 512, 256, 8);
  const auto specs = resolve_layer_specs(s.g, s.cfg.quant);
  std::vector<std::pair<int, int>> layer_bits;
  for (const Layer& L : s.g.layers) {
    for (int bits : {3, 8}) layer_bits.emplace_back(L.index, bits);
  }
  const auto qs = quantize_layers(ce, layer_bits, specs, r, nullptr, 250, 8);
  std::vector<std::pair<int, const LayerQuantization*>> cells;
  for (size_t i = 0; i < qs.size(); ++i) cells.emplace_back(layer_bits[i].first, &qs[i]->q);
  const std::vector<Tensor> want = bias_corrections(ce, cells, s.calib, s.norm, 512, 250, 8);
  const std::vector<Tensor> got = bias_corrections(ge, cells, s.calib, s.norm, 512, 250, 1);
  ASSERT_EQ(setenv("QSWEEP_HOST_BIAS_CORRECTION", "1", 1), 0);
  const std::vector<Tensor> host = bias_corrections(ge, cells, s.calib, s.norm, 512, 250, 1);
  unsetenv("QSWEEP_HOST_BIAS_CORRECTION");
  ASSERT_EQ(got.size(), want.size());
  ASSERT_EQ(host.size(), want.size());
  double worst_cpu = 0.0, worst_host = 0.0;
  for (size_t j = 0; j < want.size(); ++j) {
    ASSERT_EQ(got[j].shape, want[j].shape) << "pair " << j;
    for (size_t c = 0; c < want[j].data.size(); ++c) {
      const double a = got[j].data[c], b = want[j].data[c], h = host[j].data[c];
      worst_cpu = std::max(worst_cpu, std::abs(a - b) / (1e-2 + std::abs(b)));
      worst_host = std::max(worst_host, std::abs(a - h) / (1e-2 + std::abs(h)));
      EXPECT_LE(std::abs(a - b), 1e-5 + 1e-4 * std::abs(b)) << "layer " << cells[j].first << ", channel " << c;
      EXPECT_LE(std::abs(a - h), 1e-5 + 1e-4 * std::abs(h)) << "layer " << cells[j].first << ", channel " << c;
    }
  }
  std::printf("bias correction on the device: worst difference %.3g (vs CPU), %.3g (vs the CUDA host path), "
              "relative to |bias| + 0.01\n", worst_cpu, worst_host);
}

INSTANTIATE_TEST_SUITE_P(Models, CudaGrid, ::testing::Values(0, 1));

#ifdef QSWEEP_BINARY
// The CLI end to end on the GPU: the default config with --backend cuda and an automatic
// batch size writes a complete results folder whose manifest names the CUDA device; again
// with run.conv_transforms = true (FFT/Winograd allowed), recorded in the manifest, every
// cell's top-1 within 0.05 points of the direct convolutions'.
TEST(CudaCli, QuickstartRunsOnTheGpu) {
  REQUIRE_CUDA_DEVICE();
  if (!std::filesystem::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const auto dir = std::filesystem::temp_directory_path() / "qsweep_cuda_cli";
  std::filesystem::remove_all(dir);
  auto run_cli = [&](const std::string& extra, const std::string& name) {
    const std::string cmd = std::string(QSWEEP_BINARY) + " run " + QSWEEP_SOURCE_DIR +
                            "/configs/quickstart.toml --backend cuda --set 'run.batch_size=\"auto\"' --set output.plots=false "
                            "--set data.eval.count=3000 --set 'experiment.name=\"" + name + "\"' " + extra +
                            " --quiet --out " + dir.string() + " > " + (dir.string() + "." + name + ".out") + " 2>&1";
    EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
    std::filesystem::path run;
    for (const auto& e : std::filesystem::recursive_directory_iterator(dir / name)) {
      if (e.path().filename() == "manifest.json") run = e.path().parent_path();
    }
    return run;
  };
  // layer_name,weight_bits -> top1, from a layerwise.csv
  auto top1s = [](const std::filesystem::path& csv_path) {
    std::ifstream csv(csv_path);
    std::string line;
    std::getline(csv, line);
    std::vector<std::string> cols;
    for (size_t at = 0, next; at <= line.size(); at = next + 1) {
      next = std::min(line.find(',', at), line.size());
      cols.push_back(line.substr(at, next - at));
    }
    const auto col = [&](const std::string& c) { return std::find(cols.begin(), cols.end(), c) - cols.begin(); };
    const size_t name = col("layer_name"), bits = col("weight_bits"), top1 = col("top1");
    std::map<std::string, double> out;
    while (std::getline(csv, line)) {
      std::vector<std::string> f;
      for (size_t at = 0, next; at <= line.size(); at = next + 1) {
        next = std::min(line.find(',', at), line.size());
        f.push_back(line.substr(at, next - at));
      }
      if (f.size() == cols.size()) out[f[name] + "@" + f[bits]] = std::stod(f[top1]);
    }
    return out;
  };
  const auto run = run_cli("", "direct");
  ASSERT_FALSE(run.empty());
  std::ifstream mf(run / "manifest.json");
  const auto m = nlohmann::json::parse(mf);
  EXPECT_EQ(m["backend"]["name"], "cuda");
  EXPECT_EQ(m["backend"]["tf32"], false);
  EXPECT_EQ(m["backend"]["conv_transforms"], false);
  EXPECT_EQ(m["backend"]["fused_conv_variant"], cuda::fq_conv_variant());  // its sums' order
  EXPECT_GT(m["backend"]["batch_size"].get<int64_t>(), 250);
  const auto direct = top1s(run / "layerwise.csv");
  EXPECT_EQ(direct.size(), 60u);  // 10 layers x 6 bit-widths

  const auto fast = run_cli("--set run.conv_transforms=true", "transforms");
  ASSERT_FALSE(fast.empty());
  std::ifstream mf2(fast / "manifest.json");
  EXPECT_EQ(nlohmann::json::parse(mf2)["backend"]["conv_transforms"], true);
  const auto other = top1s(fast / "layerwise.csv");
  ASSERT_EQ(other.size(), direct.size());
  for (const auto& [cell, t] : direct) {
    ASSERT_TRUE(other.count(cell)) << cell;
    EXPECT_LE(std::abs(other.at(cell) - t), kMaxTop1Points) << cell;
  }
  std::filesystem::remove_all(dir);
}
#endif

// Runs everywhere: the backend registry's answers with and without a device.
TEST(BackendRegistry, CudaRequestIsClearWithoutDevice) {
  if (cuda_device_count() > 0) {
    EXPECT_EQ(make_backend("cuda")->name(), "cuda");
    EXPECT_EQ(make_backend("auto")->name(), "cuda");
    return;
  }
  EXPECT_EQ(make_backend("auto")->name(), "cpu");
  try {
    make_backend("cuda");
    FAIL() << "expected a UserError";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("no CUDA device is visible"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace qsweep
