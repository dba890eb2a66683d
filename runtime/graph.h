// The graph IR: what the ONNX importer produces and the executor runs.
//
// Values are tensors (activations or constants); nodes are ops in topological order, each
// with exactly one output value. Constant inputs (weights, Clip bounds, Reshape shapes) are
// stored as values with is_constant set; attribute-like constant inputs are folded into
// NodeAttrs at import.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tensor.h"

namespace qsweep {

enum class OpType {
  kConv,
  kGemm,
  kMatMul,
  kBatchNorm,
  kRelu,
  kClip,
  kLeakyRelu,
  kSigmoid,
  kHardSigmoid,
  kHardSwish,
  kAdd,
  kMul,
  kConcat,
  kMaxPool,
  kAveragePool,
  kGlobalAveragePool,
  kFlatten,
  kReshape,
  kSoftmax,
  kPad,
};

std::string_view op_name(OpType op);
bool is_activation(OpType op);

enum class AutoPad { kNotSet, kSameUpper, kSameLower, kValid };

// Normalized attributes; each op reads the fields it needs.
struct NodeAttrs {
  // Conv and pooling: spatial kernel, strides, dilations, pads [begin..., end...].
  std::vector<int64_t> kernel, strides, dilations, pads;
  AutoPad auto_pad = AutoPad::kNotSet;
  int64_t group = 1;
  bool ceil_mode = false;
  bool count_include_pad = false;
  // Gemm.
  float alpha = 1.0f, beta = 1.0f;
  bool trans_b = false;
  // Activations: Clip (alpha = min, beta = max), LeakyRelu (alpha), HardSigmoid.
  float act_alpha = 0.0f, act_beta = 0.0f;
  // BatchNormalization (when it does not follow a Conv): y = x * scale[c] + shift[c].
  std::vector<float> bn_scale, bn_shift;
  float epsilon = 1e-5f;
  // Concat, Flatten, Softmax.
  int64_t axis = 1;
  bool softmax_legacy = false;  // opset < 13: softmax over the flattened dims from axis
  // Reshape target (ONNX semantics: 0 copies the input dim, -1 is inferred).
  std::vector<int64_t> shape;
  bool allow_zero = false;
  // Pad.
  std::vector<int64_t> pad_amounts;
  int pad_mode = 0;  // PadMode
  float pad_value = 0.0f;
};

struct Value {
  std::string name;
  bool is_constant = false;
  Tensor constant;  // valid when is_constant
};

struct Node {
  std::string name;     // ONNX node name, or a generated one
  std::string onnx_op;  // the op type as written in the file
  OpType op;
  std::vector<int> inputs;  // value ids; activation inputs first, then constants
  int output = -1;
  NodeAttrs attrs;
};

// One quantizable layer (method.md, "Network and layers").
struct Layer {
  int index = 0;
  std::string name;
  int node = -1;          // the Conv / Gemm / MatMul node
  int act_node = -1;      // the fused activation node, -1 when none
  int input_value = -1;   // the activation tensor entering the layer
  int output_value = -1;  // the activation's output, else the node's output
  int weight_value = -1;
  int bias_value = -1;  // -1 when the node has none
  // Weight layout for per-channel quantization: (outer, channels, inner) with the
  // output channels in the middle. Conv (O, I/g, kH, kW): (1, O, rest); Gemm with
  // transB (N, K): (1, N, K); Gemm/MatMul (K, N): (K, N, 1).
  int64_t w_outer = 1, w_channels = 1, w_inner = 1;
};

// How a layer node's output splits into (outer, channels, inner) around its output
// channels, the axis a per-channel statistic (bias correction) runs over: Conv (N, C, ...)
// -> (N, C, rest); Gemm / MatMul (..., O) -> (rest, O, 1), the output features being the
// last axis whatever the rank.
struct ChannelLayout {
  int64_t outer = 1, channels = 1, inner = 1;
  int64_t per_image = 1;  // values per channel in one image (outer * inner / N)
};
ChannelLayout output_channel_layout(OpType op, const Shape& shape);

struct Graph {
  std::vector<Value> values;
  std::vector<Node> nodes;
  std::vector<Layer> layers;
  int input = -1;   // the single graph input (N, C, H, W)
  int output = -1;  // the single graph output (N, classes)
  Shape input_shape;  // per-sample shape, e.g. {1, 28, 28}
  int opset = 0;

  int add_value(std::string name);
  int add_constant(std::string name, Tensor t);
  // The shape of a batch of n inputs: (n, input_shape...).
  Shape batch_shape(int64_t n) const {
    Shape s{n};
    s.insert(s.end(), input_shape.begin(), input_shape.end());
    return s;
  }
  const Tensor& constant(int value) const { return values[value].constant; }
  // Consumers of each value, in node order.
  std::vector<std::vector<int>> consumers() const;

  // Enumerates the layers (method.md): call after every graph rewrite.
  void enumerate_layers();
  // Nodes whose output depends on layer j's output (including its own nodes), in order.
  std::vector<int> suffix_nodes(int layer) const;
  // The Relu or Clip that alone reads node k's sum, when k is an Add of two activations
  // (a residual join) and no quantizer sits between them (the activation is no layer's):
  // the pair a backend may run as one op, bit for bit. -1 otherwise. consumers: consumers().
  int residual_activation_of(int k, const std::vector<std::vector<int>>& consumers) const;
};

// Shape rules every backend applies the same way (UserError naming the node on bad input):
// an axis attribute normalized against a rank (negative counts from the end; axis 0, the
// batch, is refused), and the output shape of a Reshape of an input of shape `in` (ONNX: 0
// copies, -1 is inferred).
int64_t normalize_axis(const Node& n, int64_t axis, size_t rank);
// Flatten's axis for an input of this rank, in 1..rank (axis 0 would mix a batch's images).
int64_t flatten_axis(const Node& n, size_t rank);
Shape reshape_target(const Node& n, const Shape& in);

// A model that takes flat vectors, (N, F), fed images of shape `image` (C, H, W) with
// C * H * W = F: a Flatten (axis 1) becomes the graph's first node, so the graph takes
// (N, C, H, W) and its former input holds what torch's x.view(N, -1) gives.
void flatten_graph_input(Graph& g, const Shape& image);

// Folds every BatchNormalization that directly and solely consumes a Conv output into
// that Conv (method.md): W' = W * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta,
// computed in double and rounded once to float32. Returns how many were folded.
int fold_batch_norms(Graph& g);

}  // namespace qsweep
