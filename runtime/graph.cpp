#include "runtime/graph.h"

#include <algorithm>
#include <cmath>
#include <set>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "runtime/error.h"

namespace qsweep {

ChannelLayout output_channel_layout(OpType op, const Shape& shape) {
  ChannelLayout l;
  if (shape.empty()) return l;
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  if (op == OpType::kConv) {
    l.outer = shape[0];
    l.channels = shape.size() > 1 ? shape[1] : 1;
    l.inner = l.outer * l.channels > 0 ? numel / (l.outer * l.channels) : 0;
  } else {
    l.channels = shape.back();
    l.outer = l.channels > 0 ? numel / l.channels : 0;
  }
  l.per_image = shape[0] > 0 ? l.outer * l.inner / shape[0] : 0;
  return l;
}

std::string shape_str(const Shape& s) { return fmt::format("({})", fmt::join(s, ", ")); }

std::string_view op_name(OpType op) {
  switch (op) {
    case OpType::kConv: return "Conv";
    case OpType::kGemm: return "Gemm";
    case OpType::kMatMul: return "MatMul";
    case OpType::kBatchNorm: return "BatchNormalization";
    case OpType::kRelu: return "Relu";
    case OpType::kClip: return "Clip";
    case OpType::kLeakyRelu: return "LeakyRelu";
    case OpType::kSigmoid: return "Sigmoid";
    case OpType::kHardSigmoid: return "HardSigmoid";
    case OpType::kHardSwish: return "HardSwish";
    case OpType::kAdd: return "Add";
    case OpType::kMul: return "Mul";
    case OpType::kConcat: return "Concat";
    case OpType::kMaxPool: return "MaxPool";
    case OpType::kAveragePool: return "AveragePool";
    case OpType::kGlobalAveragePool: return "GlobalAveragePool";
    case OpType::kFlatten: return "Flatten";
    case OpType::kReshape: return "Reshape";
    case OpType::kSoftmax: return "Softmax";
    case OpType::kPad: return "Pad";
  }
  return "?";
}

bool is_activation(OpType op) {
  switch (op) {
    case OpType::kRelu:
    case OpType::kClip:
    case OpType::kLeakyRelu:
    case OpType::kSigmoid:
    case OpType::kHardSigmoid:
    case OpType::kHardSwish:
      return true;
    default:
      return false;
  }
}

int Graph::add_value(std::string name) {
  values.push_back(Value{std::move(name), false, {}});
  return static_cast<int>(values.size()) - 1;
}

int Graph::add_constant(std::string name, Tensor t) {
  values.push_back(Value{std::move(name), true, std::move(t)});
  return static_cast<int>(values.size()) - 1;
}

int Graph::residual_activation_of(int k, const std::vector<std::vector<int>>& consumers) const {
  const Node& n = nodes[k];
  if (n.op != OpType::kAdd || n.output == output || n.inputs.size() != 2) return -1;
  if (values[n.inputs[0]].is_constant || values[n.inputs[1]].is_constant) return -1;
  const auto& c = consumers[n.output];
  if (c.size() != 1) return -1;
  const Node& act = nodes[c[0]];
  if ((act.op != OpType::kRelu && act.op != OpType::kClip) || act.inputs[0] != n.output) return -1;
  for (size_t i = 1; i < act.inputs.size(); ++i) {
    if (!values[act.inputs[i]].is_constant) return -1;
  }
  for (const Layer& L : layers) {
    if (L.act_node == c[0]) return -1;  // a layer's activation is a quantization point
  }
  return c[0];
}

std::vector<std::vector<int>> Graph::consumers() const {
  std::vector<std::vector<int>> c(values.size());
  for (size_t n = 0; n < nodes.size(); ++n) {
    for (int v : nodes[n].inputs) {
      auto& list = c[v];
      if (list.empty() || list.back() != static_cast<int>(n)) list.push_back(static_cast<int>(n));
    }
  }
  return c;
}

void Graph::enumerate_layers() {
  layers.clear();
  const auto cons = consumers();
  for (size_t n = 0; n < nodes.size(); ++n) {
    const Node& node = nodes[n];
    if (node.op != OpType::kConv && node.op != OpType::kGemm && node.op != OpType::kMatMul) continue;
    if (node.inputs.size() < 2 || !values[node.inputs[1]].is_constant) continue;  // not a layer
    Layer L;
    L.index = static_cast<int>(layers.size());
    L.name = node.name;
    L.node = static_cast<int>(n);
    L.input_value = node.inputs[0];
    L.weight_value = node.inputs[1];
    L.bias_value = node.inputs.size() > 2 ? node.inputs[2] : -1;
    L.output_value = node.output;
    const auto& out_users = cons[node.output];
    if (out_users.size() == 1 && node.output != output) {
      const Node& user = nodes[out_users[0]];
      const bool sole_input = std::count(user.inputs.begin(), user.inputs.end(), node.output) == 1;
      if (is_activation(user.op) && user.inputs[0] == node.output && sole_input) {
        L.act_node = out_users[0];
        L.output_value = user.output;
      }
    }
    const Shape& ws = values[L.weight_value].constant.shape;
    if (node.op == OpType::kConv) {
      L.w_outer = 1;
      L.w_channels = ws[0];
      L.w_inner = shape_numel(ws) / ws[0];
    } else if (node.op == OpType::kGemm && node.attrs.trans_b) {
      L.w_outer = 1;
      L.w_channels = ws[0];
      L.w_inner = ws[1];
    } else {  // (K, N)
      L.w_outer = ws[0];
      L.w_channels = ws[1];
      L.w_inner = 1;
    }
    layers.push_back(std::move(L));
  }
}

std::vector<int> Graph::suffix_nodes(int layer) const {
  const Layer& L = layers[layer];
  std::vector<char> dirty(values.size(), 0);
  std::vector<int> out;
  for (size_t n = L.node; n < nodes.size(); ++n) {
    const Node& node = nodes[n];
    bool depends = static_cast<int>(n) == L.node;
    for (int v : node.inputs) depends = depends || dirty[v];
    if (depends) {
      dirty[node.output] = 1;
      out.push_back(static_cast<int>(n));
    }
  }
  return out;
}

int fold_batch_norms(Graph& g) {
  int folded = 0;
  auto cons = g.consumers();
  std::vector<char> remove(g.nodes.size(), 0);
  for (size_t n = 0; n < g.nodes.size(); ++n) {
    Node& bn = g.nodes[n];
    if (bn.op != OpType::kBatchNorm) continue;
    const int x = bn.inputs[0];
    // Find the producing Conv.
    int producer = -1;
    for (size_t p = 0; p < n; ++p) {
      if (g.nodes[p].output == x) producer = static_cast<int>(p);
    }
    if (producer < 0 || g.nodes[producer].op != OpType::kConv) continue;
    if (cons[x].size() != 1 || x == g.output) continue;  // the raw conv output is used elsewhere
    Node& conv = g.nodes[producer];
    if (!g.values[conv.inputs[1]].is_constant) continue;
    const Tensor& gamma = g.constant(bn.inputs[1]);
    const Tensor& beta = g.constant(bn.inputs[2]);
    const Tensor& mean = g.constant(bn.inputs[3]);
    const Tensor& var = g.constant(bn.inputs[4]);
    const Tensor& w = g.constant(conv.inputs[1]);
    const int64_t oc = w.shape[0];
    const int64_t per = w.numel() / oc;
    if (gamma.numel() != oc) {
      user_error("BatchNormalization node '{}' has {} channels but the Conv '{}' before it has {}",
                 bn.name, gamma.numel(), conv.name, oc);
    }
    Tensor nw(w.shape);
    Tensor nb(Shape{oc});
    const bool has_bias = conv.inputs.size() > 2;
    for (int64_t c = 0; c < oc; ++c) {
      const double s = static_cast<double>(gamma.data[c]) /
                       std::sqrt(static_cast<double>(var.data[c]) + static_cast<double>(bn.attrs.epsilon));
      for (int64_t i = 0; i < per; ++i) {
        nw.data[c * per + i] = static_cast<float>(static_cast<double>(w.data[c * per + i]) * s);
      }
      const double b = has_bias ? g.constant(conv.inputs[2]).data[c] : 0.0;
      nb.data[c] = static_cast<float>((b - mean.data[c]) * s + beta.data[c]);
    }
    // New constants so that shared initializers (rare) are never modified in place.
    const int wv = g.add_constant(g.values[conv.inputs[1]].name + "_bnfolded", std::move(nw));
    const int bv = g.add_constant(conv.name + "_bnfolded_bias", std::move(nb));
    conv.inputs = {conv.inputs[0], wv, bv};
    conv.output = bn.output;  // the Conv now produces what the BN produced
    remove[n] = 1;
    ++folded;
  }
  if (folded) {
    std::vector<Node> kept;
    for (size_t n = 0; n < g.nodes.size(); ++n) {
      if (!remove[n]) kept.push_back(std::move(g.nodes[n]));
    }
    g.nodes = std::move(kept);
  }
  return folded;
}

int64_t normalize_axis(const Node& n, int64_t axis, size_t rank) {
  const int64_t r = static_cast<int64_t>(rank);
  const int64_t a = axis < 0 ? axis + r : axis;
  if (a < 0 || a >= std::max<int64_t>(r, 1)) {
    user_error("node '{}' ({}) has axis {} for an input of rank {}", n.name, op_name(n.op), axis, rank);
  }
  if (a == 0) {
    user_error("node '{}' ({}) has axis {}, the batch, for an input of rank {}: each image's result would depend on "
               "the others in its batch; qsweep evaluates images independently", n.name, op_name(n.op), axis, rank);
  }
  return a;
}

int64_t flatten_axis(const Node& n, size_t rank) {
  const int64_t r = static_cast<int64_t>(rank);
  const int64_t axis = n.attrs.axis < 0 ? n.attrs.axis + r : n.attrs.axis;
  if (axis < 1 || axis > r) {
    user_error("node '{}' (Flatten) has axis {} for an input of rank {}; accepted: 1 to {} (or -{} to -1), as axis 0 "
               "would mix the images of a batch", n.name, n.attrs.axis, rank, rank, rank - 1);
  }
  return axis;
}

void flatten_graph_input(Graph& g, const Shape& image) {
  const int flat = g.input;
  const int v = g.add_value(g.values[flat].name + "_image");
  Node n;
  n.name = "qsweep_flatten_input";
  n.onnx_op = "Flatten";
  n.op = OpType::kFlatten;
  n.inputs = {v};
  n.output = flat;
  n.attrs.axis = 1;
  g.nodes.insert(g.nodes.begin(), std::move(n));
  g.input = v;
  g.input_shape = image;
  g.enumerate_layers();
}

Shape reshape_target(const Node& n, const Shape& in) {
  Shape s = n.attrs.shape;
  int64_t known = 1;
  int infer = -1;
  bool fits = true;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] < -1 || (s[i] == -1 && infer >= 0)) {
      user_error("node '{}' (Reshape) has the shape [{}]; accepted: dimensions of 0 or more, and at most one -1",
                 n.name, fmt::join(n.attrs.shape, ","));
    }
    if (s[i] == 0 && !n.attrs.allow_zero) s[i] = i < in.size() ? in[i] : 0;
    if (s[i] == -1) {
      infer = static_cast<int>(i);
    } else if (__builtin_mul_overflow(known, s[i], &known)) {
      fits = false;
    }
  }
  const int64_t numel = shape_numel(in);
  if (fits && infer >= 0) s[infer] = known ? numel / known : 0;
  if (!fits || shape_numel(s) != numel) {
    user_error("node '{}' (Reshape) cannot reshape {} into {}; a Reshape that fixes the batch size "
               "breaks batching (export with torch.flatten)", n.name, shape_str(in), fmt::join(n.attrs.shape, ","));
  }
  return s;
}

}  // namespace qsweep
