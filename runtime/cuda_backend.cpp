#include "runtime/cuda_backend.h"

#include <algorithm>
#include <functional>
#include <random>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <stdexcept>
#include <tuple>
#include <unordered_map>

#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>
#include <fmt/format.h>

#include "kernels/cuda/fake_quant.cuh"
#include "kernels/cuda/fq_conv.cuh"
#include "kernels/cuda/ops.cuh"
#include "runtime/cpu_backend.h"
#include "runtime/device_session.h"
#include "runtime/error.h"

namespace qsweep {

int cuda_device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();  // clear the sticky "no device" error
    return 0;
  }
  return n;
}

std::string cuda_device_status() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return fmt::format("cudaGetDeviceCount: {}", cudaGetErrorString(e));
  }
  return fmt::format("{} device(s)", n);
}

namespace {

using cuda::check;

void check_dnn(cudnnStatus_t s, const char* what) {
  if (s != CUDNN_STATUS_SUCCESS) throw std::runtime_error(fmt::format("cuDNN: {}: {}", what, cudnnGetErrorString(s)));
}

void check_blas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) throw std::runtime_error(fmt::format("cuBLAS: {}: status {}", what, static_cast<int>(s)));
}

// A grow-only device allocation (cudaMalloc; never managed memory).
class DevBuf {
 public:
  DevBuf() = default;
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  DevBuf(DevBuf&& o) noexcept : p_(o.p_), cap_(o.cap_) { o.p_ = nullptr, o.cap_ = 0; }
  DevBuf& operator=(DevBuf&& o) noexcept {
    if (this != &o) {
      if (p_) cudaFree(p_);
      p_ = o.p_, cap_ = o.cap_;
      o.p_ = nullptr, o.cap_ = 0;
    }
    return *this;
  }
  ~DevBuf() {
    if (p_) cudaFree(p_);
  }
  void* reserve(size_t bytes) {
    if (bytes > cap_) {
      if (p_) check(cudaFree(p_), "cudaFree");
      p_ = nullptr;
      cap_ = 0;
      const cudaError_t err = cudaMalloc(&p_, bytes);
      if (err == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        size_t free_bytes = 0, total = 0;
        cudaMemGetInfo(&free_bytes, &total);
        user_error("the GPU ran out of memory asking for {:.1f} MiB more ({:.1f} of {:.1f} GiB free): use a smaller "
                   "run.batch_size, or \"auto\" to size batches from free memory",
                   bytes / 1048576.0, free_bytes / 1073741824.0, total / 1073741824.0);
      }
      check(err, "cudaMalloc");
      cap_ = bytes;
    }
    return p_;
  }
  void* get() const { return p_; }
  size_t capacity() const { return cap_; }

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};

// A grow-only pinned host allocation.
class PinnedBuf {
 public:
  PinnedBuf() = default;
  PinnedBuf(const PinnedBuf&) = delete;
  PinnedBuf& operator=(const PinnedBuf&) = delete;
  ~PinnedBuf() {
    if (p_) cudaFreeHost(p_);
  }
  void* reserve(size_t bytes) {
    if (bytes > cap_) {
      if (p_) check(cudaFreeHost(p_), "cudaFreeHost");
      p_ = nullptr;
      cap_ = 0;
      check(cudaMallocHost(&p_, bytes), "cudaMallocHost");
      cap_ = bytes;
    }
    return p_;
  }
  void* get() const { return p_; }

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};

// A float32 device tensor, NCHW.
struct DTensor {
  Shape shape;
  DevBuf buf;
  int64_t numel() const { return shape_numel(shape); }
  float* ptr() const { return static_cast<float*>(buf.get()); }
  void reshape(const Shape& s) {
    shape = s;
    buf.reserve(std::max<size_t>(1, static_cast<size_t>(numel())) * sizeof(float));
  }
};

void upload(const Tensor& h, DTensor& d, cudaStream_t stream) {
  Tensor nchw;
  const Tensor* src = &h;
  if (h.nhwc) {
    to_nchw(h, nchw);
    src = &nchw;
  }
  d.reshape(src->shape);
  check(cudaMemcpyAsync(d.ptr(), src->ptr(), src->numel() * sizeof(float), cudaMemcpyHostToDevice, stream),
        "upload");
  if (src == &nchw) check(cudaStreamSynchronize(stream), "upload");  // nchw is about to go away
}

// Per-thread device state: one stream, cuDNN and cuBLAS handles on it, cached conv plans.
struct ConvPlan {
  cudnnTensorDescriptor_t x = nullptr, y = nullptr, bias = nullptr;
  cudnnFilterDescriptor_t w = nullptr;
  cudnnConvolutionDescriptor_t conv = nullptr;
  cudnnActivationDescriptor_t relu = nullptr;
  cudnnConvolutionFwdAlgo_t algo = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM;
  size_t workspace = 0;
  bool use_cudnn = true;  // false: asymmetric pads etc., the direct kernel runs it
};

struct DevCtx {
  int device = 0;
  bool tf32 = false;
  bool transform_convs = false;  // FFT / Winograd allowed
  // BackendOptions::own_convs: the float network's convolutions that cuda::fq_conv2d_direct()
  // runs go to it instead of cuDNN (not with TF32 or transforms, which leave them to cuDNN).
  bool own_convs = false;
  cudaStream_t stream = nullptr;
  cudnnHandle_t dnn = nullptr;
  cublasHandle_t blas = nullptr;
  DevBuf workspace, zeros;
  size_t zeros_count = 0;
  // by (node, input shape, tensor format: NCHW, or NHWC for the benchmark's comparison)
  std::map<std::tuple<const Node*, int64_t, int64_t, int64_t, int64_t, int>, ConvPlan> convs;
  std::unordered_map<const Node*, std::pair<DTensor, DTensor>> bn;  // scale, shift

  DevCtx(int dev, bool allow_tf32, bool allow_transforms = false, bool allow_own_convs = false)
      : device(dev),
        tf32(allow_tf32),
        transform_convs(allow_transforms),
        own_convs(allow_own_convs && !allow_tf32 && !allow_transforms) {
    check(cudaSetDevice(device), "cudaSetDevice");
    check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
    check_dnn(cudnnCreate(&dnn), "cudnnCreate");
    check_dnn(cudnnSetStream(dnn, stream), "cudnnSetStream");
    check_blas(cublasCreate(&blas), "cublasCreate");
    check_blas(cublasSetStream(blas, stream), "cublasSetStream");
    check_blas(cublasSetMathMode(blas, tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  }
  DevCtx(const DevCtx&) = delete;
  ~DevCtx() {
    for (auto& [k, p] : convs) {
      if (p.x) cudnnDestroyTensorDescriptor(p.x);
      if (p.y) cudnnDestroyTensorDescriptor(p.y);
      if (p.bias) cudnnDestroyTensorDescriptor(p.bias);
      if (p.w) cudnnDestroyFilterDescriptor(p.w);
      if (p.conv) cudnnDestroyConvolutionDescriptor(p.conv);
      if (p.relu) cudnnDestroyActivationDescriptor(p.relu);
    }
    if (blas) cublasDestroy(blas);
    if (dnn) cudnnDestroy(dnn);
    if (stream) cudaStreamDestroy(stream);
  }
  const float* zero_floats(size_t n) {
    if (n > zeros_count) {
      zeros.reserve(n * sizeof(float));
      check(cudaMemsetAsync(zeros.get(), 0, n * sizeof(float), stream), "cudaMemset");
      zeros_count = n;
    }
    return static_cast<const float*>(zeros.get());
  }
};

void check_rank(const Node& n, const DTensor& x, size_t rank) {
  if (x.shape.size() != rank) {
    user_error("node '{}' ({}) expects a rank-{} input; it received {}", n.name, op_name(n.op), rank,
               shape_str(x.shape));
  }
}

Activation activation_of(OpType op) {
  switch (op) {
    case OpType::kClip: return Activation::kClip;
    case OpType::kLeakyRelu: return Activation::kLeakyRelu;
    case OpType::kSigmoid: return Activation::kSigmoid;
    case OpType::kHardSigmoid: return Activation::kHardSigmoid;
    case OpType::kHardSwish: return Activation::kHardSwish;
    default: return Activation::kRelu;
  }
}

// The fused kernel's description of a Conv node on x with weights w (O, C/G, KH, KW).
cuda::FqConv conv_args(const Node& n, const DTensor& x, const DTensor& w, DTensor& out) {
  if (x.shape.size() != 4) user_error("node '{}' (Conv) expects a 4-D input; it received {}", n.name, shape_str(x.shape));
  const int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
  const int64_t O = w.shape[0], G = n.attrs.group;
  if (C != w.shape[1] * G) {
    user_error("node '{}' (Conv) received {} input channels; its weight expects {} (group {})", n.name, C,
               w.shape[1] * G, G);
  }
  const SpatialPlan sp = plan_spatial(n, H, W);
  out.reshape({N, O, sp.out_h, sp.out_w});
  cuda::FqConv p;
  p.x = x.ptr();
  p.w = w.ptr();
  p.y = out.ptr();
  p.N = N, p.C = C, p.H = H, p.W = W, p.O = O, p.KH = w.shape[2], p.KW = w.shape[3], p.OH = sp.out_h,
  p.OW = sp.out_w;
  p.stride_h = n.attrs.strides[0], p.stride_w = n.attrs.strides[1];
  p.pad_t = sp.pad_t, p.pad_l = sp.pad_l;
  p.dil_h = n.attrs.dilations[0], p.dil_w = n.attrs.dilations[1];
  p.groups = G;
  return p;
}

// The cuDNN plan of a conv for x's shape. `format` NHWC describes x, w and y as NHWC (the
// same logical shapes): only the benchmark uses it, to compare cuDNN's two layouts.
ConvPlan& conv_plan(DevCtx& ctx, const Node& n, const DTensor& x, const DTensor& w,
                    cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW) {
  const int64_t N = x.shape[0], C = x.shape[1], H = x.shape[2], W = x.shape[3];
  const auto key = std::make_tuple(&n, N, C, H, W, static_cast<int>(format));
  auto it = ctx.convs.find(key);
  if (it != ctx.convs.end()) return it->second;
  ConvPlan p;
  const SpatialPlan sp = plan_spatial(n, H, W);
  const int64_t O = w.shape[0], G = n.attrs.group;
  const bool symmetric = sp.pad_t == sp.pad_b && sp.pad_l == sp.pad_r;
  if (!symmetric) {
    p.use_cudnn = false;
    return ctx.convs.emplace(key, p).first->second;
  }
  check_dnn(cudnnCreateTensorDescriptor(&p.x), "descriptor");
  check_dnn(cudnnCreateTensorDescriptor(&p.y), "descriptor");
  check_dnn(cudnnCreateTensorDescriptor(&p.bias), "descriptor");
  check_dnn(cudnnCreateFilterDescriptor(&p.w), "descriptor");
  check_dnn(cudnnCreateConvolutionDescriptor(&p.conv), "descriptor");
  check_dnn(cudnnCreateActivationDescriptor(&p.relu), "descriptor");
  check_dnn(cudnnSetTensor4dDescriptor(p.x, format, CUDNN_DATA_FLOAT, N, C, H, W), "x descriptor");
  check_dnn(cudnnSetFilter4dDescriptor(p.w, CUDNN_DATA_FLOAT, format, O, C / G, w.shape[2], w.shape[3]),
            "w descriptor");
  check_dnn(cudnnSetConvolution2dDescriptor(p.conv, sp.pad_t, sp.pad_l, n.attrs.strides[0], n.attrs.strides[1],
                                            n.attrs.dilations[0], n.attrs.dilations[1], CUDNN_CROSS_CORRELATION,
                                            CUDNN_DATA_FLOAT),
            "conv descriptor");
  check_dnn(cudnnSetConvolutionGroupCount(p.conv, static_cast<int>(G)), "group count");
  check_dnn(cudnnSetConvolutionMathType(p.conv, ctx.tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH), "math type");
  int on, oc, oh, ow;
  check_dnn(cudnnGetConvolution2dForwardOutputDim(p.conv, p.x, p.w, &on, &oc, &oh, &ow), "output dims");
  if (oh != sp.out_h || ow != sp.out_w) {
    p.use_cudnn = false;
    return ctx.convs.emplace(key, p).first->second;
  }
  check_dnn(cudnnSetTensor4dDescriptor(p.y, format, CUDNN_DATA_FLOAT, N, O, oh, ow), "y descriptor");
  check_dnn(cudnnSetTensor4dDescriptor(p.bias, CUDNN_TENSOR_NCHW, CUDNN_DATA_FLOAT, 1, O, 1, 1), "bias descriptor");
  check_dnn(cudnnSetActivationDescriptor(p.relu, CUDNN_ACTIVATION_RELU, CUDNN_NOT_PROPAGATE_NAN, 0.0), "relu");
  // cuDNN's heuristic ranking (deterministic for a given card and library, so every
  // session, shard and resumed run picks the same kernels and gets the same numbers), first
  // among the algorithms that keep plain FP32 arithmetic: FMA math, no FFT or Winograd
  // transforms, whose rounding differs from a direct convolution.
  cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
  int returned = 0;
  check_dnn(cudnnGetConvolutionForwardAlgorithm_v7(ctx.dnn, p.x, p.w, p.conv, p.y, CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                   &returned, perf),
            "cudnnGetConvolutionForwardAlgorithm_v7");
  bool found = false;
  for (int i = 0; i < returned && !found; ++i) {
    const auto& r = perf[i];
    if (r.status != CUDNN_STATUS_SUCCESS) continue;
    if (!ctx.transform_convs &&
        (r.algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT || r.algo == CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING ||
         r.algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD || r.algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED)) {
      continue;
    }
    if (!ctx.tf32 && r.mathType != CUDNN_FMA_MATH && r.mathType != CUDNN_DEFAULT_MATH) continue;
    size_t bytes = 0;
    check_dnn(cudnnSetConvolutionMathType(p.conv, ctx.tf32 ? r.mathType : CUDNN_FMA_MATH), "math type");
    if (cudnnGetConvolutionForwardWorkspaceSize(ctx.dnn, p.x, p.w, p.conv, p.y, r.algo, &bytes) !=
        CUDNN_STATUS_SUCCESS) {
      continue;
    }
    p.algo = r.algo;
    p.workspace = bytes;
    found = true;
  }
  if (!found) p.use_cudnn = false;  // the direct kernel computes it in FP32
  return ctx.convs.emplace(key, p).first->second;
}

// out = Conv(x, w, bias), optionally followed by a ReLU (cuDNN's fused conv+bias+ReLU).
// `format` NHWC: x, w and out hold NHWC data (the benchmark's layout comparison; cuDNN only).
void run_conv(DevCtx& ctx, const Node& n, const DTensor& x, const DTensor& w, const float* bias, bool relu,
              DTensor& out, cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW) {
  // qsweep's own kernels (the direct one, or the fused one without quantizers where cuDNN has
  // no algorithm) take bias and ReLU in their epilogue.
  cuda::FqConv args = conv_args(n, x, w, out);
  args.bias = bias;
  args.has_activation = relu;
  args.act = Activation::kRelu;
  if (format == CUDNN_TENSOR_NCHW && ctx.own_convs && cuda::fq_conv2d_direct(args, ctx.stream)) return;
  ConvPlan& p = conv_plan(ctx, n, x, w, format);
  if (format != CUDNN_TENSOR_NCHW && !p.use_cudnn) throw std::runtime_error("no cuDNN algorithm for this NHWC convolution");
  if (!p.use_cudnn) return cuda::fq_conv2d(args, ctx.stream);
  void* ws = p.workspace ? ctx.workspace.reserve(p.workspace) : nullptr;
  const float one = 1.0f, zero = 0.0f;
  if (relu) {
    const float* b = bias ? bias : ctx.zero_floats(static_cast<size_t>(w.shape[0]));
    check_dnn(cudnnConvolutionBiasActivationForward(ctx.dnn, &one, p.x, x.ptr(), p.w, w.ptr(), p.conv, p.algo, ws,
                                                    p.workspace, &zero, p.y, out.ptr(), p.bias, b, p.relu, p.y,
                                                    out.ptr()),
              "cudnnConvolutionBiasActivationForward");
    return;
  }
  check_dnn(cudnnConvolutionForward(ctx.dnn, &one, p.x, x.ptr(), p.w, w.ptr(), p.conv, p.algo, ws, p.workspace, &zero,
                                    p.y, out.ptr()),
            "cudnnConvolutionForward");
  if (bias) check_dnn(cudnnAddTensor(ctx.dnn, &one, p.bias, bias, &one, p.y, out.ptr()), "cudnnAddTensor");
}

// Row-major Y (M, N) = alpha * A (M, K) * op(B) + beta * Y, with B (K, N), or (N, K) when trans_b.
void gemm(DevCtx& ctx, bool trans_b, int64_t M, int64_t N, int64_t K, float alpha, const float* A, const float* B,
          float beta, float* Y) {
  check_blas(cublasSgemm(ctx.blas, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, CUBLAS_OP_N, static_cast<int>(N),
                         static_cast<int>(M), static_cast<int>(K), &alpha, B, static_cast<int>(trans_b ? K : N), A,
                         static_cast<int>(K), &beta, Y, static_cast<int>(N)),
             "cublasSgemm");
}

void copy_as(DevCtx& ctx, const DTensor& x, const Shape& s, DTensor& out) {
  out.reshape(s);
  check(cudaMemcpyAsync(out.ptr(), x.ptr(), x.numel() * sizeof(float), cudaMemcpyDeviceToDevice, ctx.stream),
        "copy");
}

// Runs one node on device tensors. `fuse_relu`: the node is a Conv whose only consumer is
// a Relu, computed here with it.
void run_op(DevCtx& ctx, const Node& n, std::span<const DTensor* const> in, DTensor& out, bool fuse_relu = false) {
  const DTensor& x = *in[0];
  const NodeAttrs& a = n.attrs;
  cudaStream_t s = ctx.stream;
  switch (n.op) {
    case OpType::kConv:
      return run_conv(ctx, n, x, *in[1], in.size() > 2 ? in[2]->ptr() : nullptr, fuse_relu, out);
    case OpType::kGemm: {
      const DTensor& b = *in[1];
      check_rank(n, x, 2);
      const int64_t M = x.shape[0], K = x.shape[1];
      const int64_t N = a.trans_b ? b.shape[0] : b.shape[1];
      const int64_t Kb = a.trans_b ? b.shape[1] : b.shape[0];
      if (K != Kb) user_error("node '{}' (Gemm) received {} features; its weight expects {}", n.name, K, Kb);
      out.reshape({M, N});
      float beta = 0.0f;
      if (in.size() > 2 && a.beta != 0.0f) {
        const DTensor& c = *in[2];
        const Shape ys{M, N}, scalar{1};
        cuda::broadcast_binary(BinaryOp::kAdd, c.ptr(), c.shape, ctx.zero_floats(1), scalar, out.ptr(), ys, s);
        beta = a.beta;
      }
      return gemm(ctx, a.trans_b, M, N, K, a.alpha, x.ptr(), b.ptr(), beta, out.ptr());
    }
    case OpType::kMatMul: {
      const DTensor& b = *in[1];
      const int64_t K = x.shape.back(), N = b.shape[1];
      if (K != b.shape[0]) user_error("node '{}' (MatMul) received {} features; its weight expects {}", n.name, K, b.shape[0]);
      Shape os = x.shape;
      os.back() = N;
      out.reshape(os);
      gemm(ctx, false, x.numel() / K, N, K, 1.0f, x.ptr(), b.ptr(), 0.0f, out.ptr());
      if (in.size() > 2) {  // a plan's corrected bias per output feature (cpu_backend.cpp's run_matmul)
        const int64_t bias_shape[] = {N};
        cuda::broadcast_binary(BinaryOp::kAdd, out.ptr(), out.shape, in[2]->ptr(), bias_shape, out.ptr(),
                               out.shape, s);
      }
      return;
    }
    case OpType::kMaxPool:
    case OpType::kAveragePool: {
      check_rank(n, x, 4);
      const SpatialPlan sp = plan_spatial(n, x.shape[2], x.shape[3]);
      out.reshape({x.shape[0], x.shape[1], sp.out_h, sp.out_w});
      cuda::Pool2d p;
      p.max = n.op == OpType::kMaxPool;
      p.planes = x.shape[0] * x.shape[1], p.H = x.shape[2], p.W = x.shape[3], p.OH = sp.out_h, p.OW = sp.out_w;
      p.KH = a.kernel[0], p.KW = a.kernel[1], p.SH = a.strides[0], p.SW = a.strides[1];
      p.pad_t = sp.pad_t, p.pad_l = sp.pad_l;
      p.include_pad = a.count_include_pad;
      if (a.auto_pad == AutoPad::kNotSet) {
        p.decl_t = a.pads[0], p.decl_l = a.pads[1], p.decl_b = a.pads[2], p.decl_r = a.pads[3];
      } else {
        p.decl_t = sp.pad_t, p.decl_l = sp.pad_l, p.decl_b = sp.pad_b, p.decl_r = sp.pad_r;
      }
      return cuda::pool2d(p, x.ptr(), out.ptr(), s);
    }
    case OpType::kGlobalAveragePool:
      check_rank(n, x, 4);
      out.reshape({x.shape[0], x.shape[1], 1, 1});
      return cuda::global_avg_pool(x.ptr(), out.ptr(), x.shape[0] * x.shape[1], x.shape[2] * x.shape[3], s);
    case OpType::kBatchNorm: {
      const int64_t C = x.shape.size() > 1 ? x.shape[1] : 1;
      if (C != static_cast<int64_t>(a.bn_scale.size())) {
        user_error("node '{}' (BatchNormalization) received {} channels; it has {}", n.name, C, a.bn_scale.size());
      }
      auto it = ctx.bn.find(&n);
      if (it == ctx.bn.end()) {
        auto& [scale, shift] = ctx.bn[&n];
        upload(Tensor({C}, a.bn_scale), scale, s);
        upload(Tensor({C}, a.bn_shift), shift, s);
        check(cudaStreamSynchronize(s), "upload");
        it = ctx.bn.find(&n);
      }
      out.reshape(x.shape);
      return cuda::channel_affine(x.ptr(), out.ptr(), x.shape[0], C, x.numel() / (x.shape[0] * C),
                                  it->second.first.ptr(), it->second.second.ptr(), s);
    }
    case OpType::kRelu:
    case OpType::kClip:
    case OpType::kLeakyRelu:
    case OpType::kSigmoid:
    case OpType::kHardSigmoid:
    case OpType::kHardSwish:
      out.reshape(x.shape);
      return cuda::activation(activation_of(n.op), a.act_alpha, a.act_beta, x.ptr(), out.ptr(), x.numel(), s);
    case OpType::kAdd:
    case OpType::kMul: {
      const DTensor& y = *in[1];
      Shape os;
      try {
        os = broadcast_shape(x.shape, y.shape);
      } catch (const std::invalid_argument&) {
        user_error("node '{}' ({}) cannot broadcast {} with {}", n.name, op_name(n.op), shape_str(x.shape),
                   shape_str(y.shape));
      }
      out.reshape(os);
      return cuda::broadcast_binary(n.op == OpType::kAdd ? BinaryOp::kAdd : BinaryOp::kMul, x.ptr(), x.shape,
                                    y.ptr(), y.shape, out.ptr(), os, s);
    }
    case OpType::kConcat: {
      const int64_t axis = normalize_axis(n, a.axis, x.shape.size());
      Shape os = x.shape;
      os[axis] = 0;
      for (const DTensor* t : in) {
        if (t->shape.size() != x.shape.size()) user_error("node '{}' (Concat) received inputs of different ranks", n.name);
        for (size_t d = 0; d < x.shape.size(); ++d) {
          if (static_cast<int64_t>(d) != axis && t->shape[d] != x.shape[d]) {
            user_error("node '{}' (Concat) received {} and {}", n.name, shape_str(x.shape), shape_str(t->shape));
          }
        }
        os[axis] += t->shape[axis];
      }
      out.reshape(os);
      int64_t outer = 1, inner = 1;
      for (int64_t d = 0; d < axis; ++d) outer *= os[d];
      for (size_t d = axis + 1; d < os.size(); ++d) inner *= os[d];
      size_t offset = 0;
      const size_t row = static_cast<size_t>(os[axis] * inner) * sizeof(float);
      for (const DTensor* t : in) {
        const size_t len = static_cast<size_t>(t->shape[axis] * inner) * sizeof(float);
        if (len > 0 && outer > 0) {
          check(cudaMemcpy2DAsync(reinterpret_cast<char*>(out.ptr()) + offset, row, t->ptr(), len, len,
                                  static_cast<size_t>(outer), cudaMemcpyDeviceToDevice, s),
                "concat");
        }
        offset += len;
      }
      return;
    }
    case OpType::kFlatten: {
      const int64_t axis = flatten_axis(n, x.shape.size());
      int64_t outer = 1;
      for (int64_t d = 0; d < axis; ++d) outer *= x.shape[d];
      return copy_as(ctx, x, {outer, outer ? x.numel() / outer : 0}, out);
    }
    case OpType::kReshape:
      return copy_as(ctx, x, reshape_target(n, x.shape), out);
    case OpType::kSoftmax: {
      out.reshape(x.shape);
      const int64_t axis = normalize_axis(n, a.axis, x.shape.size());
      int64_t outer = 1, inner = 1;
      for (int64_t d = 0; d < axis; ++d) outer *= x.shape[d];
      if (a.softmax_legacy) return cuda::softmax(x.ptr(), out.ptr(), outer, x.numel() / std::max<int64_t>(outer, 1), 1, s);
      for (size_t d = axis + 1; d < x.shape.size(); ++d) inner *= x.shape[d];
      return cuda::softmax(x.ptr(), out.ptr(), outer, x.shape[axis], inner, s);
    }
    case OpType::kPad: {
      const size_t r = x.shape.size();
      if (a.pad_amounts.size() != 2 * r) {
        user_error("node '{}' (Pad) has {} pad values for an input of rank {}", n.name, a.pad_amounts.size(), r);
      }
      for (int64_t v : a.pad_amounts) {
        if (v < 0) user_error("node '{}' (Pad) has negative pads, which qsweep does not support", n.name);
      }
      Shape os = x.shape;
      for (size_t d = 0; d < r; ++d) os[d] += a.pad_amounts[d] + a.pad_amounts[d + r];
      out.reshape(os);
      return cuda::pad(x.ptr(), x.shape, a.pad_amounts, static_cast<PadMode>(a.pad_mode), a.pad_value, out.ptr(), os, s);
    }
  }
}

struct HostCtx final : BackendContext {
  HostCtx(int device, bool tf32, bool transforms, bool own_convs) : dev(device, tf32, transforms, own_convs) {}
  DevCtx dev;
  std::vector<DTensor> inputs;
  DTensor out;
};

void download(DevCtx& ctx, const DTensor& d, Tensor& h) {
  h.reshape_to(d.shape);
  check(cudaMemcpyAsync(h.ptr(), d.ptr(), h.numel() * sizeof(float), cudaMemcpyDeviceToHost, ctx.stream), "download");
  check(cudaStreamSynchronize(ctx.stream), "download");
}

// ---------------------------------------------------------------------------------------
// The device-resident session.

class CudaSession final : public DeviceSession {
 public:
  CudaSession(const Graph& g, int device, bool tf32, bool transforms, bool own_convs);
  ~CudaSession() override;
  void prepare(std::span<const std::pair<int, const LayerQuantization*>> qs) override;
  void stage(const Tensor& x, const int32_t* labels, int64_t n) override;
  void launch(std::span<const DeviceJob> jobs, bool materialize) override;
  void collect(DeviceOutcome& out) override;
  void widen_ranges(std::vector<float>& lo, std::vector<float>& hi, std::vector<uint8_t>& nan) override;
  int64_t max_batch(int64_t cap) override;
  Tensor prepared_weights(int layer, const LayerQuantization* q) override;
  bool bias_sums(std::span<const std::pair<int, const LayerQuantization*>> cells,
                 std::vector<std::vector<double>>& sums, std::vector<int64_t>& per_image) override;

 private:
  void quantize_weights_here(const Layer& L, const WeightRecipe& r, DTensor& out);
  struct Prepared {
    DTensor weights;  // (O, C/G, KH, KW), or (N, K) for Gemm/MatMul
    DTensor bias;
    bool has_bias = false;
  };
  using Reader = std::function<const DTensor&(int)>;
  void run_node(int k, const LayerQuantization* q, const Reader& read, std::vector<DTensor>& out, bool float_pass);
  void run_fused(int k, const LayerQuantization& q, const Reader& read, std::vector<DTensor>& out);
  cuda::FqConv layer_args(int k, const Prepared& pq, const DTensor& x, DTensor& y) const;
  bool fusable(int k, const DTensor& x) const;
  void metrics(const DTensor& y, const DTensor* yq, size_t slot, int64_t n);

  const Graph& g_;
  DevCtx ctx_;
  cudaStream_t copy_ = nullptr;
  cudaEvent_t staged_[2] = {nullptr, nullptr}, consumed_[2] = {nullptr, nullptr};
  DTensor input_[2];
  DevBuf labels_[2];
  PinnedBuf host_x_[2], host_labels_[2];
  int64_t staged_n_[2] = {0, 0};
  int64_t stage_count_ = 0, launch_count_ = 0;
  int last_slot_ = 0;

  std::vector<DTensor> consts_, values_, scratch_;
  std::unordered_map<const LayerQuantization*, Prepared> prepared_;
  std::vector<int> layer_of_node_, layer_of_act_;
  std::vector<std::vector<int>> suffixes_;
  std::vector<std::vector<char>> dirty_;
  std::vector<char> act_fusable_;   // per layer: the conv output feeds only its activation
  std::vector<int> relu_of_;        // per node: the Relu that alone consumes this Conv's output, or -1
  std::vector<int> act_of_add_;     // per node: the Relu/Clip that alone reads this Add's sum, or -1
  DTensor qin_, kn_;                // scratch of the unfused path
  DTensor bias_yq_;                 // scratch of bias_sums
  DevBuf bias_sums_;
  std::vector<const DTensor*> args_;
  std::vector<uint64_t> done_;      // per node: computed by a fused kernel in pass done_[k]
  uint64_t pass_ = 0;

  // Metrics of the last launch.
  size_t jobs_ = 0;
  int64_t n_ = 0;
  DevBuf sq_, flags_, sums_, counts_, temp_;
  size_t temp_bytes_ = 0;
  PinnedBuf host_flags_, host_sums_, host_counts_;
};

CudaSession::CudaSession(const Graph& g, int device, bool tf32, bool transforms, bool own_convs)
    : g_(g), ctx_(device, tf32, transforms, own_convs) {
  check(cudaStreamCreateWithFlags(&copy_, cudaStreamNonBlocking), "cudaStreamCreate");
  for (int i = 0; i < 2; ++i) {
    check(cudaEventCreateWithFlags(&staged_[i], cudaEventDisableTiming), "cudaEventCreate");
    check(cudaEventCreateWithFlags(&consumed_[i], cudaEventDisableTiming), "cudaEventCreate");
  }
  const size_t nv = g.values.size();
  consts_.resize(nv);
  values_.resize(nv);
  scratch_.resize(nv);
  for (size_t v = 0; v < nv; ++v) {
    if (g.values[v].is_constant) upload(g.values[v].constant, consts_[v], ctx_.stream);
  }
  layer_of_node_.assign(g.nodes.size(), -1);
  layer_of_act_.assign(g.nodes.size(), -1);
  done_.assign(g.nodes.size(), 0);
  const auto consumers = g.consumers();
  act_fusable_.assign(g.layers.size(), 0);
  for (const Layer& L : g.layers) {
    layer_of_node_[L.node] = L.index;
    if (L.act_node >= 0) {
      layer_of_act_[L.act_node] = L.index;
      const int conv_out = g.nodes[L.node].output;
      act_fusable_[L.index] = consumers[conv_out].size() == 1 && consumers[conv_out][0] == L.act_node &&
                              conv_out != g.output && g.nodes[L.act_node].inputs[0] == conv_out;
    }
    suffixes_.push_back(g.suffix_nodes(L.index));
    std::vector<char> dirty(nv, 0);
    for (int k : suffixes_.back()) dirty[g.nodes[k].output] = 1;
    dirty_.push_back(std::move(dirty));
  }
  relu_of_.assign(g.nodes.size(), -1);
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const Node& n = g.nodes[k];
    if (n.op != OpType::kConv || n.output == g.output) continue;
    const auto& c = consumers[n.output];
    if (c.size() == 1 && g.nodes[c[0]].op == OpType::kRelu && g.nodes[c[0]].inputs[0] == n.output) relu_of_[k] = c[0];
  }
  // A residual Add + Relu/Clip: one add_clamp kernel when both inputs have one shape.
  act_of_add_.assign(g.nodes.size(), -1);
  for (size_t k = 0; k < g.nodes.size(); ++k) act_of_add_[k] = g.residual_activation_of(static_cast<int>(k), consumers);
  check(cudaStreamSynchronize(ctx_.stream), "upload");
}

CudaSession::~CudaSession() {
  cudaStreamSynchronize(ctx_.stream);
  cudaStreamSynchronize(copy_);
  for (int i = 0; i < 2; ++i) {
    cudaEventDestroy(staged_[i]);
    cudaEventDestroy(consumed_[i]);
  }
  cudaStreamDestroy(copy_);
}

void CudaSession::prepare(std::span<const std::pair<int, const LayerQuantization*>> qs) {
  for (const auto& [layer, q] : qs) {
    if (q == nullptr || prepared_.count(q)) continue;
    Prepared& p = prepared_[q];
    const Layer& L = g_.layers.at(layer);
    const Node& node = g_.nodes[L.node];
    // The weights the fused kernel reads: the quantized ones, else the layer's own. With a
    // recipe they are made here from the float weights the session holds (ranges reduced on
    // the device); otherwise the host's are uploaded.
    const Tensor& w = q->weights ? *q->weights : g_.values[L.weight_value].constant;
    const bool to_nk = node.op == OpType::kMatMul || (node.op == OpType::kGemm && !node.attrs.trans_b);
    DTensor src;  // in the layer's own layout
    if (q->recipe.bits > 0) {
      quantize_weights_here(L, q->recipe, src);
    } else {
      upload(w, src, ctx_.stream);
    }
    if (to_nk) {  // (K, N) -> (N, K): one output channel's weights contiguous
      p.weights.reshape({w.shape[1], w.shape[0]});
      cuda::transpose(src.ptr(), p.weights.ptr(), w.shape[1], w.shape[0], ctx_.stream);
      check(cudaStreamSynchronize(ctx_.stream), "transpose");
    } else {
      p.weights = std::move(src);
    }
    if (q->bias) {
      upload(*q->bias, p.bias, ctx_.stream);
      p.has_bias = true;
    }
  }
  check(cudaStreamSynchronize(ctx_.stream), "prepare");
}

// The host's quantize_weights() for min/max ranges, on the device: the per-tensor or
// per-channel ranges reduced with CUB, the parameters chosen on the host from them with the
// same choose_quant_params(), the weights fake-quantized by the CUDA twin of the host's
// kernel. Equal to the host's result bit for bit (CudaSession.WeightsMadeOnTheDeviceEqualTheHosts).
void CudaSession::quantize_weights_here(const Layer& L, const WeightRecipe& r, DTensor& out) {
  const DTensor& wf = consts_.at(L.weight_value);
  const size_t n = static_cast<size_t>(wf.numel());
  const size_t outer = r.per_channel ? static_cast<size_t>(L.w_outer) : 1;
  const size_t channels = r.per_channel ? static_cast<size_t>(L.w_channels) : 1;
  const size_t inner = r.per_channel ? static_cast<size_t>(L.w_inner) : n;
  DevBuf ranges, params;
  float* d_ranges = static_cast<float*>(ranges.reserve(2 * channels * sizeof(float)));
  cuda::min_max_per_channel(wf.ptr(), outer, channels, inner, d_ranges, d_ranges + channels, ctx_.stream);
  std::vector<float> h(2 * channels);
  check(cudaMemcpyAsync(h.data(), d_ranges, h.size() * sizeof(float), cudaMemcpyDeviceToHost, ctx_.stream),
        "weight ranges");
  check(cudaStreamSynchronize(ctx_.stream), "weight ranges");
  std::vector<QuantParams> qp(channels);
  for (size_t c = 0; c < channels; ++c) qp[c] = choose_quant_params(h[c], h[channels + c], r.bits, r.scheme);
  auto* d_params = static_cast<QuantParams*>(params.reserve(channels * sizeof(QuantParams)));
  check(cudaMemcpyAsync(d_params, qp.data(), channels * sizeof(QuantParams), cudaMemcpyHostToDevice, ctx_.stream),
        "weight quantizers");
  out.reshape(wf.shape);
  cuda::fake_quantize_per_channel(wf.ptr(), out.ptr(), n / (channels * inner), channels, inner, d_params, ctx_.stream);
  check(cudaStreamSynchronize(ctx_.stream), "weight fake-quant");  // before params and ranges go
}

Tensor CudaSession::prepared_weights(int layer, const LayerQuantization* q) {
  const auto it = prepared_.find(q);
  if (it == prepared_.end()) throw std::logic_error("CUDA session: prepared_weights of a quantization not prepared");
  const Layer& L = g_.layers.at(layer);
  const Node& node = g_.nodes[L.node];
  const DTensor& d = it->second.weights;
  Tensor h;
  download(ctx_, d, h);
  if (node.op == OpType::kMatMul || (node.op == OpType::kGemm && !node.attrs.trans_b)) {  // held as (N, K)
    Tensor kn({h.shape[1], h.shape[0]});
    for (int64_t i = 0; i < h.shape[0]; ++i) {
      for (int64_t j = 0; j < h.shape[1]; ++j) kn.data[j * h.shape[0] + i] = h.data[i * h.shape[1] + j];
    }
    return kn;
  }
  return h;
}

void CudaSession::stage(const Tensor& x, const int32_t* labels, int64_t n) {
  const int slot = static_cast<int>(stage_count_ % 2);
  // The pinned buffers of this slot may still feed an earlier copy.
  check(cudaEventSynchronize(staged_[slot]), "stage");
  const size_t bytes = x.numel() * sizeof(float);
  float* hx = static_cast<float*>(host_x_[slot].reserve(bytes));
  if (x.nhwc) {
    Tensor nchw;
    to_nchw(x, nchw);
    std::memcpy(hx, nchw.ptr(), bytes);
  } else {
    std::memcpy(hx, x.ptr(), bytes);
  }
  int32_t* hl = static_cast<int32_t*>(host_labels_[slot].reserve(n * sizeof(int32_t)));
  std::memcpy(hl, labels, n * sizeof(int32_t));
  // The device buffers of this slot may still be read by a launch two batches back.
  check(cudaStreamWaitEvent(copy_, consumed_[slot], 0), "stage");
  input_[slot].reshape(x.shape);
  labels_[slot].reserve(std::max<int64_t>(n, 1) * sizeof(int32_t));
  check(cudaMemcpyAsync(input_[slot].ptr(), hx, bytes, cudaMemcpyHostToDevice, copy_), "stage");
  check(cudaMemcpyAsync(labels_[slot].get(), hl, n * sizeof(int32_t), cudaMemcpyHostToDevice, copy_), "stage");
  check(cudaEventRecord(staged_[slot], copy_), "stage");
  staged_n_[slot] = n;
  ++stage_count_;
}

void CudaSession::run_fused(int k, const LayerQuantization& q, const Reader& read, std::vector<DTensor>& out) {
  const Node& node = g_.nodes[k];
  const int layer = layer_of_node_[k];
  const Layer& L = g_.layers[layer];
  auto pit = prepared_.find(&q);
  if (pit == prepared_.end()) throw std::logic_error("CUDA session: a quantization was not prepared");
  const Prepared& pq = pit->second;
  const DTensor& x = read(node.inputs[0]);
  const bool fuse_act = L.act_node >= 0 && act_fusable_[layer];
  DTensor& y = fuse_act ? out[g_.nodes[L.act_node].output] : out[node.output];
  cuda::FqConv p = layer_args(k, pq, x, y);
  p.quantize_input = q.quantize_input;
  p.input = q.input;
  if (fuse_act) {
    const Node& an = g_.nodes[L.act_node];
    p.has_activation = true;
    p.act = activation_of(an.op);
    p.act_alpha = an.attrs.act_alpha;
    p.act_beta = an.attrs.act_beta;
    done_[L.act_node] = pass_;
  }
  p.quantize_output = q.quantize_output && (fuse_act || L.act_node < 0);
  p.output = q.output;
  cuda::fq_conv2d(p, ctx_.stream);
}

// The fused kernel's geometry, weights and bias for layer node k reading x into y (shaped
// here): a Conv as itself, Gemm / MatMul as a 1x1 convolution over rows. The bias is the
// prepared (corrected) one, else the layer's own.
cuda::FqConv CudaSession::layer_args(int k, const Prepared& pq, const DTensor& x, DTensor& y) const {
  const Node& node = g_.nodes[k];
  cuda::FqConv p;
  if (node.op == OpType::kConv) {
    p = conv_args(node, x, pq.weights, y);
  } else {
    const int64_t K = x.shape.back(), rows = x.numel() / K;
    const Tensor& w0 = g_.values[node.inputs[1]].constant;
    const bool nk = node.op == OpType::kGemm && node.attrs.trans_b;
    const int64_t O = nk ? w0.shape[0] : w0.shape[1];
    Shape os = x.shape;
    os.back() = O;
    y.reshape(os);
    p.x = x.ptr();
    p.w = pq.weights.ptr();
    p.y = y.ptr();
    p.N = rows, p.C = K, p.H = p.W = 1, p.O = O, p.OH = p.OW = 1;
    if (node.op == OpType::kGemm) p.alpha = node.attrs.alpha;
  }
  p.bias = pq.has_bias ? pq.bias.ptr() : (node.inputs.size() > 2 ? consts_[node.inputs[2]].ptr() : nullptr);
  return p;
}

bool CudaSession::bias_sums(std::span<const std::pair<int, const LayerQuantization*>> cells,
                            std::vector<std::vector<double>>& sums, std::vector<int64_t>& per_image) {
  check(cudaStreamSynchronize(ctx_.stream), "bias correction");
  const auto input_of = [&](int k) -> const DTensor& {
    const int v = g_.nodes[k].inputs[0];
    return v == g_.input ? input_[last_slot_] : values_[v];
  };
  // Every pair's layer must run in the fused kernel, from a float input and to a float
  // output that the materialized launch kept.
  size_t total = 0;
  for (const auto& [layer, q] : cells) {
    const int k = g_.layers.at(layer).node;
    const DTensor& y = values_[g_.nodes[k].output];
    if (q == nullptr || !prepared_.count(q) || !fusable(k, input_of(k)) || y.shape.size() < 2 || y.ptr() == nullptr) {
      return false;
    }
    total += static_cast<size_t>(output_channel_layout(g_.nodes[k].op, y.shape).channels);
  }
  double* d_sums = static_cast<double*>(bias_sums_.reserve(std::max<size_t>(total, 1) * sizeof(double)));
  std::vector<size_t> channels_of(cells.size());
  per_image.resize(cells.size());
  size_t at = 0;
  // Every pair on the stream (the scratch output is reused in stream order), then one copy.
  for (size_t j = 0; j < cells.size(); ++j) {
    const auto& [layer, q] = cells[j];
    const int k = g_.layers[layer].node;
    const DTensor& y = values_[g_.nodes[k].output];
    cuda::FqConv p = layer_args(k, prepared_.at(q), input_of(k), bias_yq_);
    p.quantize_input = q->quantize_input;
    p.input = q->input;
    cuda::fq_conv2d(p, ctx_.stream);
    if (bias_yq_.shape != y.shape) throw std::logic_error("CUDA session: bias correction output shapes differ");
    const ChannelLayout cl = output_channel_layout(g_.nodes[k].op, y.shape);
    const size_t channels = static_cast<size_t>(cl.channels);
    cuda::channel_difference_sums(y.ptr(), bias_yq_.ptr(), static_cast<size_t>(cl.outer), channels,
                                  static_cast<size_t>(cl.inner), d_sums + at, ctx_.stream);
    channels_of[j] = channels;
    per_image[j] = cl.per_image;
    at += channels;
  }
  std::vector<double> host(total);
  check(cudaMemcpyAsync(host.data(), d_sums, total * sizeof(double), cudaMemcpyDeviceToHost, ctx_.stream),
        "bias correction sums");
  check(cudaStreamSynchronize(ctx_.stream), "bias correction sums");
  sums.resize(cells.size());
  at = 0;
  for (size_t j = 0; j < cells.size(); ++j) {
    sums[j].assign(host.begin() + static_cast<std::ptrdiff_t>(at), host.begin() + static_cast<std::ptrdiff_t>(at + channels_of[j]));
    at += channels_of[j];
  }
  return true;
}

bool CudaSession::fusable(int k, const DTensor& x) const {
  const Node& node = g_.nodes[k];
  if (node.op == OpType::kConv || node.op == OpType::kMatMul) return true;
  // Gemm: rank-2 input, and C absent or one bias per output column added with beta = 1.
  if (x.shape.size() != 2) return false;
  if (node.inputs.size() < 3) return true;
  const Tensor& w = g_.values[node.inputs[1]].constant;
  const int64_t N = node.attrs.trans_b ? w.shape[0] : w.shape[1];
  const Tensor& c = g_.values[node.inputs[2]].constant;
  return node.attrs.beta == 1.0f && c.numel() == N && !c.shape.empty() && c.shape.back() == N;
}

void CudaSession::run_node(int k, const LayerQuantization* q, const Reader& read, std::vector<DTensor>& out,
                           bool float_pass) {
  if (done_[k] == pass_) return;  // computed by the fused kernel of its layer
  const Node& node = g_.nodes[k];
  const int layer = layer_of_node_[k];
  if (q != nullptr && layer >= 0 && fusable(k, read(node.inputs[0]))) return run_fused(k, *q, read, out);
  if (float_pass && act_of_add_[k] >= 0) {  // residual Add + Relu/Clip in one pass (every forward alike)
    const DTensor& a = read(node.inputs[0]);
    const DTensor& b = read(node.inputs[1]);
    if (a.shape == b.shape) {
      const Node& act = g_.nodes[act_of_add_[k]];
      DTensor& y = out[act.output];
      y.reshape(a.shape);
      const bool relu = act.op == OpType::kRelu;
      cuda::add_clamp(a.ptr(), b.ptr(), y.ptr(), static_cast<size_t>(a.numel()), act.attrs.act_alpha,
                      act.attrs.act_beta, relu, ctx_.stream);
      done_[act_of_add_[k]] = pass_;
      return;
    }
  }
  // Otherwise the Executor's steps, one op at a time.
  std::vector<const DTensor*>& args = args_;
  args.clear();
  for (int v : node.inputs) args.push_back(g_.values[v].is_constant ? &consts_[v] : &read(v));
  if (q != nullptr && layer >= 0) {
    const Prepared& pq = prepared_.at(q);
    if (q->quantize_input) {
      qin_.reshape(args[0]->shape);
      cuda::fake_quantize_per_tensor(args[0]->ptr(), qin_.ptr(), qin_.numel(), q->input, ctx_.stream);
      args[0] = &qin_;
    }
    if (node.op == OpType::kGemm && !node.attrs.trans_b) {  // prepared as (N, K): back to (K, N)
      const Shape& ws = g_.values[node.inputs[1]].constant.shape;
      kn_.reshape(ws);
      cuda::transpose(pq.weights.ptr(), kn_.ptr(), ws[0], ws[1], ctx_.stream);
      args[1] = &kn_;
    } else {
      args[1] = &pq.weights;
    }
    if (pq.has_bias) {
      if (args.size() > 2) args[2] = &pq.bias;
      else args.push_back(&pq.bias);
    }
  }
  // The float pass computes Conv -> Relu in one cuDNN call, straight into the Relu's value.
  const bool relu = float_pass && relu_of_[k] >= 0;
  DTensor& y = relu ? out[g_.nodes[relu_of_[k]].output] : out[node.output];
  run_op(ctx_, node, args, y, relu);
  if (relu) done_[relu_of_[k]] = pass_;
  if (q != nullptr && q->quantize_output) {
    const bool is_output = (layer >= 0 && g_.layers[layer].act_node < 0) || layer_of_act_[k] >= 0;
    if (is_output) cuda::fake_quantize_per_tensor(y.ptr(), y.ptr(), y.numel(), q->output, ctx_.stream);
  }
}

void CudaSession::metrics(const DTensor& y, const DTensor* yq, size_t slot, int64_t n) {
  const size_t classes = static_cast<size_t>(y.numel() / n);
  double* sq = static_cast<double*>(sq_.get()) + slot * n;
  uint8_t* fl = static_cast<uint8_t*>(flags_.get()) + slot * n;
  cuda::row_metrics(y.ptr(), yq ? yq->ptr() : nullptr, static_cast<const int32_t*>(labels_[last_slot_].get()), n,
                    classes, sq, fl, ctx_.stream);
  cuda::reduce_rows(sq, fl, n, static_cast<double*>(sums_.get()) + slot, static_cast<int64_t*>(counts_.get()) + slot,
                    temp_.get(), temp_bytes_, ctx_.stream);
}

void CudaSession::launch(std::span<const DeviceJob> jobs, bool materialize) {
  if (launch_count_ >= stage_count_) throw std::logic_error("CUDA session: launch without a staged batch");
  const int slot = static_cast<int>(launch_count_ % 2);
  last_slot_ = slot;
  ++launch_count_;
  check(cudaStreamWaitEvent(ctx_.stream, staged_[slot], 0), "launch");
  const int64_t n = staged_n_[slot];
  n_ = n;
  jobs_ = jobs.size();
  const size_t rows = (jobs_ + 1) * static_cast<size_t>(n);
  sq_.reserve(rows * sizeof(double));
  flags_.reserve(rows);
  sums_.reserve((jobs_ + 1) * sizeof(double));
  counts_.reserve((jobs_ + 1) * sizeof(int64_t));
  const size_t tb = cuda::reduce_temp_bytes(static_cast<size_t>(n));
  if (tb > temp_bytes_) {
    temp_.reserve(tb);
    temp_bytes_ = tb;
  }

  const DTensor& input = input_[slot];
  // The float32 forward: every value kept.
  ++pass_;
  const Reader read_values = [&](int v) -> const DTensor& { return v == g_.input ? input : values_[v]; };
  // Conv -> Relu pairs outside the quantized layer run as one cuDNN call in every forward
  // (float, suffix, plan), so the one-pass and naive ways run the same kernels per node.
  const bool fuse = !materialize;
  for (size_t k = 0; k < g_.nodes.size(); ++k) run_node(static_cast<int>(k), nullptr, read_values, values_, fuse);
  const DTensor& y = values_[g_.output];
  metrics(y, nullptr, 0, n);

  for (size_t j = 0; j < jobs.size(); ++j) {
    const DeviceJob& job = jobs[j];
    ++pass_;
    const DTensor* yq;
    if (job.plan != nullptr) {  // a whole-network forward with the plan's layers quantized
      const Reader read = [&](int v) -> const DTensor& { return v == g_.input ? input : scratch_[v]; };
      for (size_t k = 0; k < g_.nodes.size(); ++k) {
        const int layer = layer_of_node_[k] >= 0 ? layer_of_node_[k] : layer_of_act_[k];
        const LayerQuantization* q = layer >= 0 ? (*job.plan)[layer] : nullptr;
        run_node(static_cast<int>(k), q, read, scratch_, fuse);
      }
      yq = &scratch_[g_.output];
    } else {  // a grid cell: only the suffix of its layer
      const std::vector<char>& dirty = dirty_[job.layer];
      const Reader read = [&](int v) -> const DTensor& {
        return v == g_.input ? input : dirty[v] ? scratch_[v] : values_[v];
      };
      for (int k : suffixes_[job.layer]) {
        const bool mine = layer_of_node_[k] == job.layer || layer_of_act_[k] == job.layer;
        run_node(k, mine ? job.q : nullptr, read, scratch_, fuse);
      }
      yq = dirty[g_.output] ? &scratch_[g_.output] : &values_[g_.output];
    }
    metrics(y, yq, j + 1, n);
  }
  check(cudaEventRecord(consumed_[slot], ctx_.stream), "launch");
  // Results to pinned host memory, still asynchronously.
  void* hf = host_flags_.reserve(rows);
  void* hs = host_sums_.reserve((jobs_ + 1) * sizeof(double));
  void* hc = host_counts_.reserve((jobs_ + 1) * sizeof(int64_t));
  check(cudaMemcpyAsync(hf, flags_.get(), rows, cudaMemcpyDeviceToHost, ctx_.stream), "results");
  check(cudaMemcpyAsync(hs, sums_.get(), (jobs_ + 1) * sizeof(double), cudaMemcpyDeviceToHost, ctx_.stream), "results");
  check(cudaMemcpyAsync(hc, counts_.get(), (jobs_ + 1) * sizeof(int64_t), cudaMemcpyDeviceToHost, ctx_.stream),
        "results");
}

void CudaSession::collect(DeviceOutcome& out) {
  check(cudaStreamSynchronize(ctx_.stream), "the grid's kernels");
  const int64_t n = n_;
  const uint8_t* hf = static_cast<const uint8_t*>(host_flags_.get());
  const double* hs = static_cast<const double*>(host_sums_.get());
  const int64_t* hc = static_cast<const int64_t*>(host_counts_.get());
  out.images = n;
  out.energy = hs[0];
  out.float_correct = hc[0];
  out.float_flags.assign(hf, hf + n);
  out.noise.resize(jobs_);
  out.correct.resize(jobs_);
  out.flags.resize(jobs_);
  for (size_t j = 0; j < jobs_; ++j) {
    out.noise[j] = hs[j + 1];
    out.correct[j] = hc[j + 1];
    out.flags[j].assign(hf + (j + 1) * n, hf + (j + 2) * n);
  }
}

void CudaSession::widen_ranges(std::vector<float>& lo, std::vector<float>& hi, std::vector<uint8_t>& nan) {
  check(cudaStreamSynchronize(ctx_.stream), "calibration");
  for (size_t v = 0; v < g_.values.size(); ++v) {
    if (g_.values[v].is_constant) continue;
    const DTensor& t = static_cast<int>(v) == g_.input ? input_[last_slot_] : values_[v];
    if (t.shape.empty() || t.numel() == 0 || t.ptr() == nullptr) continue;
    float l, h;
    cuda::min_max(t.ptr(), static_cast<size_t>(t.numel()), &l, &h, ctx_.stream);
    if (!nan[v] && cuda::any_nan(t.ptr(), static_cast<size_t>(t.numel()), ctx_.stream)) nan[v] = 1;
    lo[v] = std::min(lo[v], l);
    hi[v] = std::max(hi[v], h);
  }
}

int64_t CudaSession::max_batch(int64_t cap) {
  // Per-image bytes from a one-image forward: every value and its suffix scratch, two
  // staged inputs (device and pinned host), metrics.
  Tensor one(g_.batch_shape(1));
  const int32_t label = 0;
  stage(one, &label, 1);
  launch({}, true);
  DeviceOutcome ignored;
  collect(ignored);
  int64_t floats = 4 * one.numel();
  for (size_t v = 0; v < g_.values.size(); ++v) {
    if (!g_.values[v].is_constant) floats += 2 * values_[v].numel();
  }
  size_t free_bytes = 0, total = 0;
  check(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo");
  const double per_image = static_cast<double>(floats) * sizeof(float) * 1.25 + 1024;
  int64_t b = static_cast<int64_t>(0.5 * static_cast<double>(free_bytes) / per_image);
  b = std::clamp<int64_t>(b, 1, std::max<int64_t>(cap, 1));
  if (b > 64) b -= b % 32;
  return b;
}

}  // namespace

// ---------------------------------------------------------------------------------------

ConvTiming time_layer_conv(const Node& conv, const Shape& x_shape, const Shape& w_shape, int reps,
                           const BackendOptions& options, const std::vector<int>& variants) {
  DevCtx ctx(options.device, options.tf32, options.transform_convs);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  auto random = [&](const Shape& sh) {
    Tensor t(sh);
    for (float& v : t.data) v = d(rng);
    return t;
  };
  DTensor x, w, b, y;
  upload(random(x_shape), x, ctx.stream);
  upload(random(w_shape), w, ctx.stream);
  upload(random({w_shape[0]}), b, ctx.stream);
  check(cudaStreamSynchronize(ctx.stream), "upload");
  const QuantParams qin = choose_quant_params(-1.0f, 1.0f, 8, Scheme::kAsymmetric);
  const QuantParams qout = choose_quant_params(0.0f, 4.0f, 8, Scheme::kAsymmetric);
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "event");
  check(cudaEventCreate(&e1), "event");
  auto median_ms = [&](const std::function<void()>& f) {
    const int warmups = reps == 1 ? 0 : 3;  // reps = 1: under a profiler, one launch per shape
    for (int i = 0; i < warmups; ++i) f();
    std::vector<float> ms;
    for (int i = 0; i < reps; ++i) {
      check(cudaEventRecord(e0, ctx.stream), "event");
      f();
      check(cudaEventRecord(e1, ctx.stream), "event");
      check(cudaEventSynchronize(e1), "event");
      float t = 0.0f;
      check(cudaEventElapsedTime(&t, e0, e1), "event");
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return static_cast<double>(ms[ms.size() / 2]);
  };
  ConvTiming r;
  r.cudnn_ms = median_ms([&] { run_conv(ctx, conv, x, w, nullptr, false, y); });
  r.cudnn_bias_relu_ms = median_ms([&] { run_conv(ctx, conv, x, w, b.ptr(), true, y); });
  // The same call with the tensors in NHWC (the values are random either way).
  r.cudnn_nhwc_bias_relu_ms = std::numeric_limits<double>::quiet_NaN();
  try {
    run_conv(ctx, conv, x, w, b.ptr(), true, y, CUDNN_TENSOR_NHWC);
    r.cudnn_nhwc_bias_relu_ms = median_ms([&] { run_conv(ctx, conv, x, w, b.ptr(), true, y, CUDNN_TENSOR_NHWC); });
  } catch (const std::exception&) {
    // no FP32 algorithm for this shape in NHWC: left NaN
  }
  // The unfused way to the same result: fake-quant kernel, cuDNN conv + bias + ReLU,
  // fake-quant kernel (what the quantized layer would cost without the fused kernel).
  DTensor xq;
  xq.reshape(x.shape);
  r.unfused_ms = median_ms([&] {
    cuda::fake_quantize_per_tensor(x.ptr(), xq.ptr(), static_cast<size_t>(x.numel()), qin, ctx.stream);
    run_conv(ctx, conv, xq, w, b.ptr(), true, y);
    cuda::fake_quantize_per_tensor(y.ptr(), y.ptr(), static_cast<size_t>(y.numel()), qout, ctx.stream);
  });
  const int in_use = cuda::fq_conv_variant();
  r.fused_variant_ms.assign(cuda::kFqConvVariants, std::numeric_limits<double>::quiet_NaN());
  for (int v = 0; v < cuda::kFqConvVariants; ++v) {
    if (v != in_use && !variants.empty() && std::find(variants.begin(), variants.end(), v) == variants.end()) continue;
    cuda::set_fq_conv_variant(v);
    r.fused_variant_ms[v] = median_ms([&] {
      cuda::FqConv p = conv_args(conv, x, w, y);
      p.bias = b.ptr();
      p.quantize_input = true;
      p.input = qin;
      p.has_activation = true;
      p.act = Activation::kRelu;
      p.quantize_output = true;
      p.output = qout;
      cuda::fq_conv2d(p, ctx.stream);
    });
  }
  cuda::set_fq_conv_variant(in_use);
  r.fused_ms = r.fused_variant_ms[in_use];
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  const int64_t G = conv.attrs.group;
  r.flops = 2.0 * static_cast<double>(shape_numel(y.shape)) * static_cast<double>(x_shape[1] / G) * w_shape[2] * w_shape[3];
  r.shape = fmt::format("{}x{}x{}x{} -> {}, {}x{}/{}, g{}", x_shape[0], x_shape[1], x_shape[2], x_shape[3], w_shape[0],
                        w_shape[2], w_shape[3], conv.attrs.strides[0], G);
  return r;
}

CudaBackend::CudaBackend(const BackendOptions& options) : options_(options) {
  try {  // a bad $QSWEEP_FQCONV_VARIANT is a user's error, reported before any work starts
    cuda::fq_conv_variant();
  } catch (const std::invalid_argument& e) {
    user_error("{}", e.what());
  }
  if (const char* env = std::getenv("QSWEEP_CUDNN_CONVS"); env != nullptr && *env != '\0') {
    const std::string v(env);
    if (v != "0" && v != "1") user_error("QSWEEP_CUDNN_CONVS='{}': accepted values are 0 and 1", v);
    if (v == "1") options_.own_convs = false;
  }
  check(cudaSetDevice(options.device), "cudaSetDevice");
}
CudaBackend::~CudaBackend() = default;

int CudaBackend::fused_conv_variant() const { return cuda::fq_conv_variant(); }

std::string CudaBackend::device_name() const {
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, options_.device), "cudaGetDeviceProperties");
  return fmt::format("{} (device {}, sm_{}{}, {:.0f} GiB, {} SMs){}{}", prop.name, options_.device, prop.major,
                     prop.minor, prop.totalGlobalMem / double(1ull << 30), prop.multiProcessorCount,
                     options_.tf32 ? ", TF32 allowed" : ", FP32 (no TF32)",
                     options_.transform_convs ? ", FFT/Winograd convolutions allowed"
                     : own_convs() ? ", qsweep's direct FP32 kernel for the convolutions it runs"
                                   : "");
}

std::string CudaBackend::library_versions() const {
  int rt = 0, drv = 0, blas = 0;
  cudaRuntimeGetVersion(&rt);
  cudaDriverGetVersion(&drv);
  cublasGetProperty(MAJOR_VERSION, &blas);
  int blas_minor = 0;
  cublasGetProperty(MINOR_VERSION, &blas_minor);
  const size_t dnn = cudnnGetVersion();
  return fmt::format("CUDA runtime {}.{}, driver {}.{}, cuDNN {}.{}.{}, cuBLAS {}.{}", rt / 1000, (rt % 1000) / 10,
                     drv / 1000, (drv % 1000) / 10, dnn / 10000, (dnn % 10000) / 100, dnn % 100, blas, blas_minor);
}

double CudaBackend::fp32_peak_flops() const {
  int sms = 0, khz = 0, major = 0, minor = 0;
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, options_.device);
  cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, options_.device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, options_.device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, options_.device);
  const int lanes = (major == 8 && minor == 0) || major < 8 ? 64 : 128;
  return static_cast<double>(sms) * lanes * 2.0 * khz * 1e3;
}

bool CudaBackend::supports(OpType) const { return true; }

std::unique_ptr<BackendContext> CudaBackend::make_context() const {
  return std::make_unique<HostCtx>(options_.device, options_.tf32, options_.transform_convs, options_.own_convs);
}

void CudaBackend::run(BackendContext& base, const Node& node, std::span<const Tensor* const> inputs,
                      Tensor& out) const {
  auto& ctx = static_cast<HostCtx&>(base);
  if (ctx.inputs.size() < inputs.size()) ctx.inputs.resize(inputs.size());
  std::vector<const DTensor*> args;
  for (size_t i = 0; i < inputs.size(); ++i) {
    upload(*inputs[i], ctx.inputs[i], ctx.dev.stream);
    args.push_back(&ctx.inputs[i]);
  }
  run_op(ctx.dev, node, args, ctx.out);
  download(ctx.dev, ctx.out, out);
}

void CudaBackend::fake_quantize(BackendContext& base, const Tensor& x, const QuantParams& p, Tensor& y) const {
  auto& ctx = static_cast<HostCtx&>(base);
  if (ctx.inputs.empty()) ctx.inputs.resize(1);
  upload(x, ctx.inputs[0], ctx.dev.stream);
  cuda::fake_quantize_per_tensor(ctx.inputs[0].ptr(), ctx.inputs[0].ptr(), x.numel(), p, ctx.dev.stream);
  download(ctx.dev, ctx.inputs[0], y);
}

std::unique_ptr<DeviceSession> CudaBackend::make_session(const Graph& graph) const {
  return std::make_unique<CudaSession>(graph, options_.device, options_.tf32, options_.transform_convs,
                                       options_.own_convs);
}

}  // namespace qsweep
