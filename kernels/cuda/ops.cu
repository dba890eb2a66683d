#include "kernels/cuda/ops.cuh"

#include <algorithm>
#include <cfloat>
#include <stdexcept>
#include <string>

#include <cub/block/block_reduce.cuh>
#include <cub/device/device_reduce.cuh>
#include <thrust/execution_policy.h>
#include <thrust/iterator/transform_iterator.h>
#include <thrust/logical.h>
#include <thrust/transform_reduce.h>

#include "kernels/cpu/metrics.h"

namespace qsweep::cuda {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("CUDA: ") + what + ": " + cudaGetErrorString(err));
}

namespace {

constexpr int kThreads = 256;

unsigned blocks_for(size_t n, int threads = kThreads) {
  size_t b = (n + threads - 1) / threads;
  if (b > (1u << 30)) b = 1u << 30;
  return static_cast<unsigned>(b == 0 ? 1 : b);
}

void launched(const char* what) { check(cudaGetLastError(), what); }

constexpr int kMaxRank = 8;
struct Dims {
  int rank;
  int64_t out[kMaxRank];
  int64_t a[kMaxRank];  // strides (broadcast: 0) or input shape, per kernel
  int64_t b[kMaxRank];
};

// Element strides of `shape` aligned to the right of out_shape, 0 on broadcast dims (as
// broadcast_strides() in kernels/cpu/eltwise.cpp).
void broadcast_strides(std::span<const int64_t> shape, std::span<const int64_t> out_shape, int64_t* strides) {
  const size_t r = out_shape.size();
  for (size_t i = 0; i < r; ++i) strides[i] = 0;
  int64_t s = 1;
  for (size_t k = shape.size(); k-- > 0;) {
    const size_t i = k + (r - shape.size());
    strides[i] = shape[k] == 1 ? 0 : s;
    s *= shape[k];
  }
}

__global__ void activation_kernel(Activation act, float alpha, float beta, const float* x, float* y, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    y[i] = activation_value(act, alpha, beta, x[i]);
  }
}

__global__ void binary_same_kernel(bool add, const float* a, const float* b, float* y, size_t n) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    y[i] = add ? __fadd_rn(a[i], b[i]) : __fmul_rn(a[i], b[i]);
  }
}

// The CPU add_clamp's expressions on the rounded sum: Add then Relu/Clip bit for bit.
__global__ void add_clamp_kernel(const float* a, const float* b, float* y, size_t n, float lo, float hi, bool relu) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float s = __fadd_rn(a[i], b[i]);
    y[i] = relu ? (s > 0.0f ? s : 0.0f) : activation_value(Activation::kClip, lo, hi, s);
  }
}

__global__ void binary_broadcast_kernel(bool add, const float* a, const float* b, float* y, size_t n, Dims d) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    size_t rest = i;
    int64_t ia = 0, ib = 0;
    for (int k = d.rank - 1; k >= 0; --k) {
      const int64_t idx = static_cast<int64_t>(rest % d.out[k]);
      rest /= d.out[k];
      ia += idx * d.a[k];
      ib += idx * d.b[k];
    }
    y[i] = add ? __fadd_rn(a[ia], b[ib]) : __fmul_rn(a[ia], b[ib]);
  }
}

__global__ void channel_affine_kernel(const float* x, float* y, size_t total, size_t c, size_t inner,
                                      const float* scale, const float* shift) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t ch = (i / inner) % c;
    y[i] = __fadd_rn(__fmul_rn(x[i], scale[ch]), shift[ch]);
  }
}

__global__ void softmax_kernel(const float* x, float* y, size_t outer, size_t k, size_t inner) {
  const size_t t = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x;
  if (t >= outer * inner) return;
  const size_t o = t / inner, in = t % inner;
  const float* xr = x + o * k * inner + in;
  float* yr = y + o * k * inner + in;
  float m = xr[0];
  for (size_t i = 1; i < k; ++i) m = fmaxf(m, xr[i * inner]);
  float sum = 0.0f;
  for (size_t i = 0; i < k; ++i) {
    const float e = expf(xr[i * inner] - m);
    yr[i * inner] = e;
    sum += e;
  }
  for (size_t i = 0; i < k; ++i) yr[i * inner] /= sum;
}

__global__ void pad_kernel(const float* x, float* y, size_t n, Dims d, int mode, float value) {
  // d.a: input shape, d.b: leading pads.
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    size_t rest = i;
    int64_t offset = 0, stride = 1;
    bool inside = true;
    for (int k = d.rank - 1; k >= 0; --k) {
      int64_t s = static_cast<int64_t>(rest % d.out[k]) - d.b[k];
      rest /= d.out[k];
      const int64_t len = d.a[k];
      if (s < 0 || s >= len) {
        if (mode == static_cast<int>(PadMode::kConstant)) {
          inside = false;
        } else if (mode == static_cast<int>(PadMode::kEdge)) {
          s = s < 0 ? 0 : len - 1;
        } else if (len == 1) {
          s = 0;
        } else {
          const int64_t period = 2 * (len - 1);
          s = ((s % period) + period) % period;
          if (s >= len) s = period - s;
        }
      }
      offset += s * stride;
      stride *= len;
    }
    y[i] = inside ? x[offset] : value;
  }
}

__global__ void pool2d_kernel(Pool2d p, const float* x, float* y) {
  const size_t total = static_cast<size_t>(p.planes) * p.OH * p.OW;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int64_t ow = static_cast<int64_t>(i % p.OW);
    const int64_t oh = static_cast<int64_t>((i / p.OW) % p.OH);
    const int64_t plane = static_cast<int64_t>(i / (static_cast<size_t>(p.OW) * p.OH));
    const float* xp = x + plane * p.H * p.W;
    const int64_t h0 = oh * p.SH - p.pad_t, w0 = ow * p.SW - p.pad_l;
    if (p.max) {
      float m = -FLT_MAX;
      bool any = false;
      for (int64_t kh = 0; kh < p.KH; ++kh) {
        const int64_t h = h0 + kh;
        if (h < 0 || h >= p.H) continue;
        for (int64_t kw = 0; kw < p.KW; ++kw) {
          const int64_t w = w0 + kw;
          if (w < 0 || w >= p.W) continue;
          const float v = xp[h * p.W + w];
          m = any ? fmaxf(m, v) : v;
          any = true;
        }
      }
      y[i] = any ? m : 0.0f;
    } else {
      float s = 0.0f;
      int64_t taps = 0;
      for (int64_t kh = 0; kh < p.KH; ++kh) {
        const int64_t h = h0 + kh;
        const bool h_in = h >= 0 && h < p.H;
        const bool h_decl = h >= -p.decl_t && h < p.H + p.decl_b;
        for (int64_t kw = 0; kw < p.KW; ++kw) {
          const int64_t w = w0 + kw;
          const bool w_in = w >= 0 && w < p.W;
          if (h_in && w_in) s += xp[h * p.W + w];
          if (p.include_pad ? (h_decl && w >= -p.decl_l && w < p.W + p.decl_r) : (h_in && w_in)) ++taps;
        }
      }
      y[i] = taps > 0 ? s / static_cast<float>(taps) : 0.0f;
    }
  }
}

// One warp per plane, accumulated in double.
__global__ void global_avg_pool_kernel(const float* x, float* y, size_t planes, size_t hw) {
  const size_t warp = (blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= planes) return;
  const float* xp = x + warp * hw;
  double s = 0.0;
  for (size_t k = lane; k < hw; k += 32) s += xp[k];
  for (int off = 16; off > 0; off /= 2) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) y[warp] = static_cast<float>(s / static_cast<double>(hw));
}

// One warp per row: the squared error in double and the outcome bits of row_outcome()
// (kernels/cpu/metrics.cpp): the label's rank in ranks_before()'s order, counted across the
// warp; rank 0 is argmax() == label (lowest index on ties, NaN never wins).
__global__ void row_metrics_kernel(const float* y, const float* y_hat, const int32_t* labels, size_t n, size_t k,
                                   double* sq, uint8_t* correct) {
  const size_t row = (blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;
  const float* yr = y + row * k;
  const float* qr = y_hat ? y_hat + row * k : yr;
  const int32_t label = labels[row];
  const bool valid = label >= 0 && static_cast<size_t>(label) < k;
  const size_t l = valid ? static_cast<size_t>(label) : 0;
  const float lv = valid ? qr[l] : 0.0f;
  double s = 0.0;
  unsigned rank = 0;
  for (size_t i = lane; i < k; i += 32) {
    const double d = y_hat ? static_cast<double>(yr[i]) - static_cast<double>(qr[i]) : static_cast<double>(yr[i]);
    s += d * d;
    rank += i != l && ranks_before(qr[i], i, lv, l);
  }
  for (int off = 16; off > 0; off /= 2) {
    s += __shfl_down_sync(0xffffffffu, s, off);
    rank += __shfl_down_sync(0xffffffffu, rank, off);
  }
  if (lane == 0) {
    sq[row] = s;
    correct[row] = valid ? static_cast<uint8_t>((rank == 0 ? kTop1Bit : 0) | (rank < kTopK ? kTop5Bit : 0)) : 0;
  }
}

// The top-1 bit of an outcome, as a count.
struct ToInt64 {
  __host__ __device__ int64_t operator()(uint8_t v) const { return v & kTop1Bit; }
};

struct MinMaxOf {
  __host__ __device__ float2 operator()(float v) const {
    return v == v ? make_float2(v, v) : make_float2(FLT_MAX, -FLT_MAX);
  }
};
struct IsNan {
  __host__ __device__ bool operator()(float v) const { return v != v; }
};
struct MinMaxJoin {
  __host__ __device__ float2 operator()(float2 a, float2 b) const {
    return make_float2(fminf(a.x, b.x), fmaxf(a.y, b.y));
  }
};

__global__ void transpose_kernel(const float* in, float* out, size_t rows, size_t cols) {
  __shared__ float tile[32][33];
  const size_t bx = blockIdx.x * 32, by = blockIdx.y * 32;
  for (int j = threadIdx.y; j < 32; j += 8) {
    const size_t r = by + j, c = bx + threadIdx.x;  // in is (cols, rows): in[c' * rows + r']
    if (r < cols && c < rows) tile[j][threadIdx.x] = in[r * rows + c];
  }
  __syncthreads();
  for (int j = threadIdx.y; j < 32; j += 8) {
    const size_t r = bx + j, c = by + threadIdx.x;
    if (r < rows && c < cols) out[r * cols + c] = tile[threadIdx.x][j];
  }
}

}  // namespace

void activation(Activation act, float alpha, float beta, const float* x, float* y, size_t n, cudaStream_t stream) {
  if (n == 0) return;
  activation_kernel<<<blocks_for(n), kThreads, 0, stream>>>(act, alpha, beta, x, y, n);
  launched("activation");
}

void add_clamp(const float* a, const float* b, float* y, size_t n, float lo, float hi, bool relu, cudaStream_t stream) {
  if (n == 0) return;
  add_clamp_kernel<<<blocks_for(n), kThreads, 0, stream>>>(a, b, y, n, lo, hi, relu);
  launched("add + activation");
}

void broadcast_binary(BinaryOp op, const float* a, std::span<const int64_t> a_shape, const float* b,
                      std::span<const int64_t> b_shape, float* out, std::span<const int64_t> out_shape,
                      cudaStream_t stream) {
  size_t n = 1;
  for (int64_t d : out_shape) n *= static_cast<size_t>(d);
  if (n == 0) return;
  const bool add = op == BinaryOp::kAdd;
  const bool same = std::equal(a_shape.begin(), a_shape.end(), out_shape.begin(), out_shape.end()) &&
                    std::equal(b_shape.begin(), b_shape.end(), out_shape.begin(), out_shape.end());
  if (same) {
    binary_same_kernel<<<blocks_for(n), kThreads, 0, stream>>>(add, a, b, out, n);
    return launched("binary");
  }
  if (out_shape.size() > kMaxRank) throw std::runtime_error("CUDA broadcast: rank above 8");
  Dims d{};
  d.rank = static_cast<int>(out_shape.size());
  for (int k = 0; k < d.rank; ++k) d.out[k] = out_shape[k];
  broadcast_strides(a_shape, out_shape, d.a);
  broadcast_strides(b_shape, out_shape, d.b);
  binary_broadcast_kernel<<<blocks_for(n), kThreads, 0, stream>>>(add, a, b, out, n, d);
  launched("broadcast binary");
}

void channel_affine(const float* x, float* y, size_t n, size_t c, size_t inner, const float* scale,
                    const float* shift, cudaStream_t stream) {
  const size_t total = n * c * inner;
  if (total == 0) return;
  channel_affine_kernel<<<blocks_for(total), kThreads, 0, stream>>>(x, y, total, c, inner, scale, shift);
  launched("channel affine");
}

void softmax(const float* x, float* y, size_t outer, size_t k, size_t inner, cudaStream_t stream) {
  if (outer * inner == 0 || k == 0) return;
  softmax_kernel<<<blocks_for(outer * inner), kThreads, 0, stream>>>(x, y, outer, k, inner);
  launched("softmax");
}

void pad(const float* x, std::span<const int64_t> in_shape, std::span<const int64_t> pads, PadMode mode,
         float value, float* y, std::span<const int64_t> out_shape, cudaStream_t stream) {
  if (in_shape.size() > kMaxRank) throw std::runtime_error("CUDA pad: rank above 8");
  Dims d{};
  d.rank = static_cast<int>(in_shape.size());
  size_t n = 1;
  for (int k = 0; k < d.rank; ++k) {
    d.out[k] = out_shape[k];
    d.a[k] = in_shape[k];
    d.b[k] = pads[k];
    n *= static_cast<size_t>(out_shape[k]);
  }
  if (n == 0) return;
  pad_kernel<<<blocks_for(n), kThreads, 0, stream>>>(x, y, n, d, static_cast<int>(mode), value);
  launched("pad");
}

void pool2d(const Pool2d& p, const float* x, float* y, cudaStream_t stream) {
  const size_t n = static_cast<size_t>(p.planes) * p.OH * p.OW;
  if (n == 0) return;
  pool2d_kernel<<<blocks_for(n), kThreads, 0, stream>>>(p, x, y);
  launched("pool2d");
}

void global_avg_pool(const float* x, float* y, size_t planes, size_t hw, cudaStream_t stream) {
  if (planes == 0) return;
  global_avg_pool_kernel<<<blocks_for(planes * 32), kThreads, 0, stream>>>(x, y, planes, hw);
  launched("global average pool");
}

void row_metrics(const float* y, const float* y_hat, const int32_t* labels, size_t n, size_t k, double* sq,
                 uint8_t* correct, cudaStream_t stream) {
  if (n == 0) return;
  row_metrics_kernel<<<blocks_for(n * 32), kThreads, 0, stream>>>(y, y_hat, labels, n, k, sq, correct);
  launched("row metrics");
}

size_t reduce_temp_bytes(size_t n) {
  size_t a = 0, b = 0;
  check(cub::DeviceReduce::Sum(nullptr, a, static_cast<const double*>(nullptr), static_cast<double*>(nullptr),
                               static_cast<int>(n)),
        "cub::DeviceReduce::Sum (size)");
  auto it = thrust::make_transform_iterator(static_cast<const uint8_t*>(nullptr), ToInt64());
  check(cub::DeviceReduce::Sum(nullptr, b, it, static_cast<int64_t*>(nullptr), static_cast<int>(n)),
        "cub::DeviceReduce::Sum (size)");
  return a > b ? a : b;
}

void reduce_rows(const double* sq, const uint8_t* correct, size_t n, double* out_sum, int64_t* out_count, void* temp,
                 size_t temp_bytes, cudaStream_t stream) {
  size_t bytes = temp_bytes;
  check(cub::DeviceReduce::Sum(temp, bytes, sq, out_sum, static_cast<int>(n), stream), "cub::DeviceReduce::Sum");
  bytes = temp_bytes;
  auto it = thrust::make_transform_iterator(correct, ToInt64());
  check(cub::DeviceReduce::Sum(temp, bytes, it, out_count, static_cast<int>(n), stream), "cub::DeviceReduce::Sum");
}

namespace {
constexpr int kDiffThreads = 256;
__global__ void channel_difference_sums_kernel(const float* a, const float* b, size_t outer, size_t channels,
                                               size_t inner, double* sums) {
  const size_t c = blockIdx.x;
  double acc = 0.0;
  const size_t count = outer * inner;  // (o, i) flattened: Gemm outputs have inner = 1
  for (size_t e = threadIdx.x; e < count; e += kDiffThreads) {
    const size_t o = e / inner, i = e - o * inner;
    const size_t at = (o * channels + c) * inner + i;
    acc += static_cast<double>(a[at]) - static_cast<double>(b[at]);
  }
  using Reduce = cub::BlockReduce<double, kDiffThreads>;
  __shared__ typename Reduce::TempStorage temp;
  const double sum = Reduce(temp).Sum(acc);
  if (threadIdx.x == 0) sums[c] = sum;
}
}  // namespace

void channel_difference_sums(const float* a, const float* b, size_t outer, size_t channels, size_t inner,
                             double* sums, cudaStream_t stream) {
  if (channels == 0) return;
  if (outer * inner == 0) {
    check(cudaMemsetAsync(sums, 0, channels * sizeof(double), stream), "channel_difference_sums");
    return;
  }
  channel_difference_sums_kernel<<<static_cast<unsigned>(channels), kDiffThreads, 0, stream>>>(a, b, outer, channels,
                                                                                               inner, sums);
  launched("channel difference sums");
}

void min_max(const float* x, size_t n, float* lo, float* hi, cudaStream_t stream) {
  const float2 r = thrust::transform_reduce(thrust::cuda::par.on(stream), x, x + n, MinMaxOf(),
                                            make_float2(FLT_MAX, -FLT_MAX), MinMaxJoin());
  *lo = r.x;
  *hi = r.y;
}

bool any_nan(const float* x, size_t n, cudaStream_t stream) {
  return thrust::any_of(thrust::cuda::par.on(stream), x, x + n, IsNan());
}

void transpose(const float* in, float* out, size_t rows, size_t cols, cudaStream_t stream) {
  if (rows * cols == 0) return;
  dim3 grid(static_cast<unsigned>((rows + 31) / 32), static_cast<unsigned>((cols + 31) / 32));
  transpose_kernel<<<grid, dim3(32, 8), 0, stream>>>(in, out, rows, cols);
  launched("transpose");
}

}  // namespace qsweep::cuda
