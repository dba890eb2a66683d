// The CPU backend: oneDNN for convolution and pooling, oneDNN's sgemm for Gemm/MatMul,
// kernels/cpu for everything else. Single-threaded per call: parallelism comes from the
// caller running independent batches on separate threads (OpenMP), which keeps every
// result independent of the thread count.
#pragma once

#include "runtime/backend.h"

namespace qsweep {

class CpuBackend final : public Backend {
 public:
  // transform_convs (run.conv_transforms): 3x3 stride-1 convolutions whose channel counts
  // are multiples of 16 run as Winograd F(4x4, 3x3) (kernels/cpu/winograd.h) on AVX-512
  // CPUs; every other convolution stays a oneDNN direct one.
  explicit CpuBackend(bool transform_convs = false);
  ~CpuBackend() override;
  std::string name() const override { return "cpu"; }
  std::string device_name() const override;
  std::string library_versions() const override;
  bool supports(OpType op) const override;
  std::unique_ptr<BackendContext> make_context() const override;
  void run(BackendContext& ctx, const Node& node, std::span<const Tensor* const> inputs,
           Tensor& out) const override;
  void fake_quantize(BackendContext& ctx, const Tensor& x, const QuantParams& p,
                     Tensor& y) const override;
  // Relu and Clip (ReLU6) run as oneDNN post-ops of the convolution: exact, as separate ops.
  bool fuses_activation(OpType op, OpType act) const override;
  bool conv_transforms() const override;
  // Conv -> residual Add -> Relu/Clip: the join and activation in the epilogue of qsweep's
  // convolution kernels, or as one loop after oneDNN's.
  bool fuses_residual(OpType act) const override;
  void run_conv_residual(BackendContext& ctx, const Node& conv, const Node& add, const Node& act,
                         std::span<const Tensor* const> inputs, const Tensor& residual, Tensor& out) const override;
  void run_with_activation(BackendContext& ctx, const Node& conv, const Node& act,
                           std::span<const Tensor* const> inputs, Tensor& out) const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Output spatial size and the effective pads of a Conv or pooling node for an input of
// spatial size (h, w): resolves auto_pad and ceil_mode. pads = {top, left, bottom, right}.
struct SpatialPlan {
  int64_t out_h, out_w;
  int64_t pad_t, pad_l, pad_b, pad_r;
};
SpatialPlan plan_spatial(const NodeAttrs& a, int64_t h, int64_t w);
// The same for node n, refusing a window that does not fit in its padded input.
SpatialPlan plan_spatial(const Node& n, int64_t h, int64_t w);

}  // namespace qsweep
