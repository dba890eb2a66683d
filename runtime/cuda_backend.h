// The CUDA backend: cuDNN convolutions (math pinned to FP32 FMA unless run.tf32), cuBLAS
// for Gemm/MatMul, kernels/cuda for the rest, and a device-resident session
// (runtime/device_session.h) that runs the grid with the fused fake-quant kernels of
// kernels/cuda/fq_conv.cuh. Backend::run works on host tensors (upload, run, download): the
// path the op tests compare against the CPU backend; experiments use the session.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/backend.h"
#include "runtime/device_session.h"

namespace qsweep {

// Number of visible CUDA devices (0 when the driver or device is missing).
int cuda_device_count();
// Why no device is visible, e.g. "cudaGetDeviceCount: no CUDA-capable device is detected".
std::string cuda_device_status();

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const BackendOptions& options);
  ~CudaBackend() override;
  std::string name() const override { return "cuda"; }
  std::string device_name() const override;
  std::string library_versions() const override;
  bool supports(OpType op) const override;
  std::unique_ptr<BackendContext> make_context() const override;
  void run(BackendContext& ctx, const Node& node, std::span<const Tensor* const> inputs,
           Tensor& out) const override;
  void fake_quantize(BackendContext& ctx, const Tensor& x, const QuantParams& p,
                     Tensor& y) const override;
  std::unique_ptr<DeviceSession> make_session(const Graph& graph) const override;
  bool tf32() const override { return options_.tf32; }
  bool conv_transforms() const override { return options_.transform_convs; }
  int fused_conv_variant() const override;
  // Whether the float network's convolutions run on qsweep's direct kernel where it applies
  // (BackendOptions::own_convs, not turned off by $QSWEEP_CUDNN_CONVS, run.tf32 or
  // run.conv_transforms).
  bool own_convs() const { return options_.own_convs && !options_.tf32 && !options_.transform_convs; }
  int device() const { return options_.device; }

  // The card's FP32 (FMA) peak in FLOP/s: SMs x FP32 lanes per SM x 2 x the SM clock.
  double fp32_peak_flops() const;

 private:
  BackendOptions options_;
};

// Times layer `layer`'s convolution (a Conv layer) at batch size `batch` on seeded random
// data of the shapes the graph gives it (input spatial size from `input_hw`): cuDNN as the
// float32 forward runs it (plain, and with bias + ReLU fused), and the fused fake-quant
// kernel (input and output fake-quant, bias, ReLU), in each of its implementation variants
// (kernels/cuda/fq_conv.cuh). Milliseconds per call, the median of `reps` timed calls after
// 3 warm-up calls; with reps = 1 (a profiler's run: one launch of each kernel per shape)
// no warm-up.
struct ConvTiming {
  double cudnn_ms = 0.0, cudnn_bias_relu_ms = 0.0;
  double cudnn_nhwc_bias_relu_ms = 0.0;   // the same with x, w and y in NHWC; NaN: no algorithm
  double unfused_ms = 0.0;                // fake-quant kernel, cuDNN conv+bias+ReLU, fake-quant kernel
  double fused_ms = 0.0;                  // the variant in use (cuda::fq_conv_variant())
  std::vector<double> fused_variant_ms;   // by variant index; NaN for variants not timed
  double flops = 0.0;  // 2 x multiply-adds of one call
  std::string shape;   // "N x C x H x W -> O, k x k / s, groups g"
};
// `variants`: which fused-kernel variants to time (empty: all); the one in use always is.
ConvTiming time_layer_conv(const Node& conv, const Shape& x_shape, const Shape& w_shape, int reps,
                           const BackendOptions& options, const std::vector<int>& variants = {});

}  // namespace qsweep
