// The Backend interface: what runs one node of the graph IR on some device.
//
// The CPU backend (runtime/cpu_backend.h) is always built and is the reference every
// other backend is tested against.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "kernels/cpu/fake_quant.h"
#include "runtime/graph.h"
#include "runtime/tensor.h"

namespace qsweep {

// Per-thread state of a backend (primitive caches, streams, scratch buffers). A context is
// used by one thread at a time; the backend itself is shared.
class DeviceSession;

class BackendContext {
 public:
  virtual ~BackendContext() = default;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;         // "cpu", "cuda"
  virtual std::string device_name() const = 0;  // what it runs on, for the manifest
  virtual std::string library_versions() const = 0;
  virtual bool supports(OpType op) const = 0;
  virtual std::unique_ptr<BackendContext> make_context() const = 0;

  // Runs one node. `inputs` holds one tensor per node input, constants included, in node
  // order; a caller may pass a different (e.g. fake-quantized) weight tensor as input 1.
  virtual void run(BackendContext& ctx, const Node& node, std::span<const Tensor* const> inputs,
                   Tensor& out) const = 0;

  // y = fake_quantize(x) per tensor; y may be x.
  virtual void fake_quantize(BackendContext& ctx, const Tensor& x, const QuantParams& p,
                             Tensor& y) const = 0;

  // Runs a node (a Conv, or an Add) together with the activation `act` that alone consumes
  // its output, in one call, with the same result, bit for bit, as the two nodes one after
  // the other; `out` is the activation's output. Only called when fuses_activation(node.op,
  // act.op) is true.
  virtual bool fuses_activation(OpType /*op*/, OpType /*act*/) const { return false; }
  virtual void run_with_activation(BackendContext& ctx, const Node& node, const Node& act,
                                   std::span<const Tensor* const> inputs, Tensor& out) const;

  // A Conv (without an activation of its own) whose output only a residual Add reads, that
  // Add's other operand `residual`, and the Relu/Clip `act` that alone consumes the sum:
  // out = act(conv(inputs) + residual) in one call, bit for bit the three nodes one after
  // the other. Only called when fuses_residual(act.op) is true.
  virtual bool fuses_residual(OpType /*act*/) const { return false; }
  virtual void run_conv_residual(BackendContext& ctx, const Node& conv, const Node& add, const Node& act,
                                 std::span<const Tensor* const> inputs, const Tensor& residual, Tensor& out) const;

  // A device-resident session for `graph` (runtime/device_session.h), or nullptr when the
  // backend runs node by node on host tensors (the CPU backend).
  virtual std::unique_ptr<DeviceSession> make_session(const Graph& graph) const;

  // Whether the float32 reference uses TF32 tensor cores (run.tf32; CUDA only).
  virtual bool tf32() const { return false; }
  // Whether its convolutions may be FFT / Winograd ones (run.conv_transforms): cuDNN's choice
  // on CUDA, Winograd F(4x4, 3x3) for the 3x3 stride-1 ones on an AVX-512 CPU.
  virtual bool conv_transforms() const { return false; }
  // CUDA: the fused fake-quant conv's implementation variant ($QSWEEP_FQCONV_VARIANT or the
  // default; kernels/cuda/fq_conv.cuh), which some variants' summation order ties the numbers
  // to; -1 for backends without one. Recorded in the manifest.
  virtual int fused_conv_variant() const { return -1; }
};

struct BackendOptions {
  int device = 0;     // which GPU (CUDA)
  bool tf32 = false;  // allow TF32 in cuDNN/cuBLAS (CUDA); the default is plain FP32 FMA
  // run.conv_transforms: let cuDNN pick FFT and Winograd convolutions too (CUDA), or run 3x3
  // stride-1 convolutions as Winograd F(4x4, 3x3) (CPU, AVX-512). Still float32, but rounded
  // differently from a direct convolution.
  bool transform_convs = false;
  // CUDA: the float32 network's convolutions with a kernel larger than 1x1 and a multiple of
  // 16 input channels per group run on qsweep's direct FP32 kernel (cuda::fq_conv2d_direct,
  // the fused conv's tap-major kernel without its quantizers) instead of cuDNN's, which it
  // beat on ResNet18's 3x3 layers on an H200 (bench/RESULTS.md). Plain FP32 FMA either way,
  // summed in another order. Not with tf32 or transform_convs, which leave every
  // convolution to cuDNN. $QSWEEP_CUDNN_CONVS=1 turns it off (the CUDA backend reads it).
  bool own_convs = true;
};

// "cpu", "cuda" or "auto" (CUDA when built in and a device is present, else CPU), on
// device `device` (the CPU backend has one device and ignores it). Throws UserError naming
// what is available when the request cannot be met.
std::unique_ptr<Backend> make_backend(const std::string& name, int device = 0);
std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& options);

// Whether this build has the CUDA backend and at least one device is visible.
bool cuda_device_available();

}  // namespace qsweep
