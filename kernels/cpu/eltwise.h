// Element-wise and small data-movement ops on the CPU (float32, NCHW).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <vector>

namespace qsweep {

enum class Activation { kRelu, kClip, kLeakyRelu, kSigmoid, kHardSigmoid, kHardSwish };

// ONNX semantics: Clip(x, alpha=min, beta=max); LeakyRelu(alpha); HardSigmoid(alpha, beta)
// = max(0, min(1, alpha * x + beta)); HardSwish = x * HardSigmoid(1/6, 1/2).
void activation(Activation act, float alpha, float beta, const float* x, float* y, size_t n);

// y = relu(a + b) (relu = true) or y = min(max(a + b, lo), hi): Add then Relu/Clip in one pass,
// bit for bit the two ops one after the other. y may alias a or b.
void add_clamp(const float* a, const float* b, float* y, size_t n, float lo, float hi, bool relu);

enum class BinaryOp { kAdd, kMul };

// NumPy-style broadcasting of a and b into out_shape (computed by broadcast_shape).
std::vector<int64_t> broadcast_shape(std::span<const int64_t> a, std::span<const int64_t> b);
void broadcast_binary(BinaryOp op, const float* a, std::span<const int64_t> a_shape,
                      const float* b, std::span<const int64_t> b_shape, float* out,
                      std::span<const int64_t> out_shape);

// y = x * scale[c] + shift[c] over (N, C, inner).
void channel_affine(const float* x, float* y, size_t n, size_t c, size_t inner,
                    const float* scale, const float* shift);

// Softmax over the middle dimension of an (outer, k, inner) view.
void softmax(const float* x, float* y, size_t outer, size_t k, size_t inner);

// Concatenation along an axis of tensors viewed as (outer, axis_i * inner).
void concat(std::span<const float* const> inputs, std::span<const size_t> axis_sizes,
            size_t outer, size_t inner, float* out);

enum class PadMode { kConstant, kReflect, kEdge };

// Pads a tensor of shape in_shape by pads = [begin_0..begin_r, end_0..end_r].
void pad(const float* x, std::span<const int64_t> in_shape, std::span<const int64_t> pads,
         PadMode mode, float value, float* y);

}  // namespace qsweep
