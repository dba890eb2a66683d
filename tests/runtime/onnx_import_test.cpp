// ONNX importer tests on hand-built graphs (tests/runtime/onnx_builder.h): BatchNormalization
// folding, layer enumeration and naming (method.md, "Network and layers"), and the
// UserErrors a user sees for models qsweep cannot run.
#include "runtime/onnx_import.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/cpu_backend.h"
#include "runtime/error.h"
#include "runtime/executor.h"
#include "tests/runtime/onnx_builder.h"
#include "tests/runtime/run_graph.h"

namespace qsweep {
namespace {

using test::attr_f;
using test::attr_i;
using test::attr_ints;
using test::attr_s;
using test::OnnxBuilder;

// Folding BN into a Conv changes where float32 rounds: W*s and (b-m)*s+beta are rounded
// once each (from double) instead of rounding the conv output and then x*scale+shift.
// With inputs and weights in [-1, 1], a 3x3x3 fan-in and s = gamma/sqrt(var+eps) <= ~3.4,
// the outputs stay below ~16 in magnitude (measured: 12.5), where one float32 ulp is
// 2^-20 ~ 9.5e-7; the two paths differ by a few ulps of the accumulated sum (measured:
// 2.9e-6, 3 ulps). 1e-5 is ~10 ulps there, yet a wrong fold (a missing scale, a dropped
// bias, mean or beta) moves outputs by O(0.1..1).
constexpr double kMaxAbsBnFold = 1e-5;

std::vector<float> uniform(std::mt19937& rng, size_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> d(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

Tensor random_tensor(std::mt19937& rng, Shape s) {
  Tensor t(std::move(s));
  t.data = uniform(rng, t.data.size());
  return t;
}

using test::run_graph;

int count_op(const Graph& g, OpType op) {
  return static_cast<int>(std::count_if(g.nodes.begin(), g.nodes.end(), [&](const Node& n) { return n.op == op; }));
}

int find_node(const Graph& g, const std::string& name) {
  for (size_t i = 0; i < g.nodes.size(); ++i) {
    if (g.nodes[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

int find_value(const Graph& g, const std::string& name) {
  for (size_t i = 0; i < g.values.size(); ++i) {
    if (g.values[i].name == name) return static_cast<int>(i);
  }
  return -1;
}

// Imports and returns the UserError message; fails the test when nothing is thrown (or
// something other than a UserError is).
std::string import_error(const std::string& bytes, const std::string& origin = "test.onnx") {
  try {
    import_onnx_bytes(bytes, origin);
  } catch (const UserError& e) {
    return e.what();
  }
  ADD_FAILURE() << "import_onnx_bytes accepted the model";
  return "";
}

void expect_contains(const std::string& msg, const std::vector<std::string>& pieces) {
  for (const auto& p : pieces) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' missing from: " << msg;
}

// ---------------------------------------------------------------- BatchNormalization folding

struct BnParams {
  std::vector<float> gamma, beta, mean, var;
};

BnParams random_bn(std::mt19937& rng, int64_t c) {
  return {uniform(rng, c, 0.5f, 1.5f), uniform(rng, c, -1.0f, 1.0f), uniform(rng, c, -1.0f, 1.0f),
          uniform(rng, c, 0.2f, 2.0f)};
}

void add_bn(OnnxBuilder& b, const BnParams& p, const std::string& in, const std::string& out,
            const std::string& name, float eps) {
  const int64_t c = static_cast<int64_t>(p.gamma.size());
  b.initializer(name + "_g", p.gamma, {c})
      .initializer(name + "_b", p.beta, {c})
      .initializer(name + "_m", p.mean, {c})
      .initializer(name + "_v", p.var, {c})
      .node("BatchNormalization", {in, name + "_g", name + "_b", name + "_m", name + "_v"}, {out},
            {attr_f("epsilon", eps)}, name);
}

class BnFoldConvBnRelu : public ::testing::TestWithParam<bool> {};

TEST_P(BnFoldConvBnRelu, KeepsOutputs) {
  const bool with_bias = GetParam();
  constexpr float kEps = 1e-3f;
  std::mt19937 rng(with_bias ? 11 : 12);
  const int64_t C = 3, O = 6;
  const auto w = uniform(rng, O * C * 9);
  const auto bias = uniform(rng, O);
  const BnParams bn = random_bn(rng, O);
  OnnxBuilder b;
  b.input("x", {C, 10, 10}).initializer("w", w, {O, C, 3, 3});
  if (with_bias) b.initializer("bias", bias, {O});
  b.node("Conv", with_bias ? std::vector<std::string>{"x", "w", "bias"} : std::vector<std::string>{"x", "w"},
         {"c"}, {attr_ints("pads", {1, 1, 1, 1})}, "conv");
  add_bn(b, bn, "c", "n", "bn", kEps);
  b.node("Relu", {"n"}, {"y"}, {}, "relu").output("y");

  const Graph folded = import_onnx_bytes(b.serialize(), "test.onnx", ImportOptions{.fold_batch_norm = true});
  const Graph unfolded = import_onnx_bytes(b.serialize(), "test.onnx", ImportOptions{.fold_batch_norm = false});
  EXPECT_EQ(count_op(folded, OpType::kBatchNorm), 0);
  EXPECT_EQ(count_op(unfolded, OpType::kBatchNorm), 1);
  ASSERT_EQ(folded.nodes.size(), 2u);

  // The folded constants are the method.md formulas in double, rounded once to float32.
  const Node& conv = folded.nodes[0];
  ASSERT_EQ(conv.op, OpType::kConv);
  ASSERT_EQ(conv.inputs.size(), 3u);
  const Tensor& fw = folded.constant(conv.inputs[1]);
  const Tensor& fb = folded.constant(conv.inputs[2]);
  ASSERT_EQ(fw.shape, (Shape{O, C, 3, 3}));
  ASSERT_EQ(fb.shape, (Shape{O}));
  int weight_mismatch = 0, bias_mismatch = 0;
  for (int64_t o = 0; o < O; ++o) {
    const double s = static_cast<double>(bn.gamma[o]) / std::sqrt(static_cast<double>(bn.var[o]) + static_cast<double>(kEps));
    for (int64_t i = 0; i < C * 9; ++i) {
      weight_mismatch += fw.data[o * C * 9 + i] != static_cast<float>(static_cast<double>(w[o * C * 9 + i]) * s);
    }
    const double b0 = with_bias ? bias[o] : 0.0;
    bias_mismatch += fb.data[o] != static_cast<float>((b0 - bn.mean[o]) * s + bn.beta[o]);
  }
  EXPECT_EQ(weight_mismatch, 0);
  EXPECT_EQ(bias_mismatch, 0);

  // The layer's output is now the Relu's output, as in the unfolded graph after BN.
  ASSERT_EQ(folded.layers.size(), 1u);
  EXPECT_EQ(folded.layers[0].act_node, 1);
  EXPECT_EQ(folded.layers[0].output_value, folded.output);
  ASSERT_EQ(unfolded.layers.size(), 1u);
  EXPECT_EQ(unfolded.layers[0].act_node, -1);  // the BN sits between the Conv and the Relu

  const Tensor x = random_tensor(rng, {3, C, 10, 10});
  const Tensor yf = run_graph(folded, x);
  const Tensor yu = run_graph(unfolded, x);
  ASSERT_EQ(yf.shape, yu.shape);
  double max_diff = 0.0, max_y = 0.0;
  int positive = 0;
  for (int64_t i = 0; i < yf.numel(); ++i) {
    max_diff = std::max(max_diff, std::abs(static_cast<double>(yf.data[i]) - yu.data[i]));
    max_y = std::max(max_y, std::abs(static_cast<double>(yu.data[i])));
    positive += yu.data[i] > 0.0f;
  }
  EXPECT_LE(max_diff, kMaxAbsBnFold);
  std::printf("[ BN folding ] max abs difference folded vs unfolded: %.3g (max |y| %.3g)\n", max_diff, max_y);
  EXPECT_GT(positive, yu.numel() / 10);  // the comparison is not between two zero tensors
}

INSTANTIATE_TEST_SUITE_P(WithAndWithoutBias, BnFoldConvBnRelu, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "ConvBias" : "NoConvBias"; });

TEST(BnFold, BatchNormNotAfterConvStays) {
  std::mt19937 rng(13);
  const int64_t C = 4;
  OnnxBuilder b;
  b.input("x", {C, 5, 5})
      .initializer("w", uniform(rng, C * C), {C, C, 1, 1})
      .node("Conv", {"x", "w"}, {"c"}, {}, "conv")
      .node("Relu", {"c"}, {"r"}, {}, "relu");
  add_bn(b, random_bn(rng, C), "r", "y", "bn", 1e-3f);
  b.output("y");
  const Graph g = import_onnx_bytes(b.serialize(), "test.onnx");
  EXPECT_EQ(count_op(g, OpType::kBatchNorm), 1);
  ASSERT_EQ(g.layers.size(), 1u);
  EXPECT_EQ(g.layers[0].act_node, find_node(g, "relu"));

  // A BN on the graph input has no producer at all.
  OnnxBuilder b2;
  b2.input("x", {C, 5, 5});
  add_bn(b2, random_bn(rng, C), "x", "y", "bn", 1e-3f);
  b2.output("y");
  const Graph g2 = import_onnx_bytes(b2.serialize(), "test.onnx");
  ASSERT_EQ(g2.nodes.size(), 1u);
  EXPECT_EQ(g2.nodes[0].op, OpType::kBatchNorm);
}

TEST(BnFold, ConvOutputWithSecondConsumerIsNotFolded) {
  std::mt19937 rng(14);
  const int64_t C = 4;
  OnnxBuilder b;
  b.input("x", {C, 6, 6})
      .initializer("w", uniform(rng, C * C * 9), {C, C, 3, 3})
      .node("Conv", {"x", "w"}, {"c"}, {attr_ints("pads", {1, 1, 1, 1})}, "conv");
  add_bn(b, random_bn(rng, C), "c", "n", "bn", 1e-3f);
  b.node("Add", {"n", "c"}, {"y"}, {}, "add").output("y");
  const Graph g = import_onnx_bytes(b.serialize(), "test.onnx");
  EXPECT_EQ(count_op(g, OpType::kBatchNorm), 1);
  const int conv = find_node(g, "conv");
  ASSERT_GE(conv, 0);
  EXPECT_EQ(g.values[g.nodes[conv].inputs[1]].name, "w");  // the original weight
  ASSERT_EQ(g.layers.size(), 1u);
  EXPECT_EQ(g.layers[0].output_value, find_value(g, "c"));

  // Same graph, same numbers as with folding disabled.
  const Graph u = import_onnx_bytes(b.serialize(), "test.onnx", ImportOptions{.fold_batch_norm = false});
  const Tensor x = random_tensor(rng, {2, C, 6, 6});
  const Tensor y1 = run_graph(g, x), y2 = run_graph(u, x);
  EXPECT_EQ(y1.shape, y2.shape);
  EXPECT_EQ(y1.data, y2.data);
}

// ---------------------------------------------------------------- layers

// Node list (positions as in the ONNX file):
//  0 conv_a  Conv(x)            3->4, bias      layer 0, fused with 1
//  1 (Relu)  Relu(a)                            -> generated name "Relu_1"
//  2 (Conv)  Conv(a_r)          4->4, no bias   layer 1 "Conv_2"; output feeds an Add
//  3 add     Add(b, a_r)
//  4 conv_c  Conv(s)            4->4 1x1        layer 2; output feeds Relu AND Mul: no fusion
//  5 relu_c  Relu(c)
//  6 mul_c   Mul(c, c_r)
//  7 conv_d  Conv(m)            4->4 1x1        layer 3, fused with the Clip (ReLU6)
//  8 cmin    Constant 0
//  9 cmax    Constant 6
// 10 relu6_d Clip(d, cmin, cmax)
// 11 (GlobalAveragePool), 12 (Flatten)
// 13 mm      MatMul(f, (4,5))                   layer 4
// 14 (Gemm)  Gemm(mmo, (3,5)^T, bias)           layer 5 "Gemm_14", the logits
std::string layered_model() {
  std::mt19937 rng(21);
  OnnxBuilder b;
  auto constant = [&](const std::string& name, float v) {
    b.node("Constant", {}, {name}, {attr_f("value_float", v)}, name);
  };
  b.input("x", {3, 8, 8})
      .initializer("wA", uniform(rng, 4 * 3 * 9), {4, 3, 3, 3})
      .initializer("bA", uniform(rng, 4), {4})
      .initializer("wB", uniform(rng, 4 * 4 * 9), {4, 4, 3, 3})
      .initializer("wC", uniform(rng, 16), {4, 4, 1, 1})
      .initializer("wD", uniform(rng, 16), {4, 4, 1, 1})
      .initializer("wM", uniform(rng, 20), {4, 5})
      .initializer("wG", uniform(rng, 15), {3, 5})
      .initializer("bG", uniform(rng, 3), {3});
  b.node("Conv", {"x", "wA", "bA"}, {"a"}, {attr_ints("pads", {1, 1, 1, 1})}, "conv_a")
      .node("Relu", {"a"}, {"a_r"})
      .node("Conv", {"a_r", "wB"}, {"b"}, {attr_ints("pads", {1, 1, 1, 1})})
      .node("Add", {"b", "a_r"}, {"s"}, {}, "add")
      .node("Conv", {"s", "wC"}, {"c"}, {}, "conv_c")
      .node("Relu", {"c"}, {"c_r"}, {}, "relu_c")
      .node("Mul", {"c", "c_r"}, {"m"}, {}, "mul_c")
      .node("Conv", {"m", "wD"}, {"d"}, {}, "conv_d");
  constant("cmin", 0.0f);
  constant("cmax", 6.0f);
  b.node("Clip", {"d", "cmin", "cmax"}, {"d6"}, {}, "relu6_d")
      .node("GlobalAveragePool", {"d6"}, {"g"})
      .node("Flatten", {"g"}, {"f"})
      .node("MatMul", {"f", "wM"}, {"mmo"}, {}, "mm")
      .node("Gemm", {"mmo", "wG", "bG"}, {"logits"}, {attr_i("transB", 1)})
      .output("logits");
  return b.serialize();
}

TEST(Layers, EnumerationNamesAndFields) {
  const Graph g = import_onnx_bytes(layered_model(), "test.onnx");
  struct Want {
    std::string name;
    OpType op;
    std::string act;  // name of the fused activation node, "" for none
    std::string input, output, bias;
    int64_t outer, channels, inner;
  };
  const std::vector<Want> want = {
      {"conv_a", OpType::kConv, "Relu_1", "x", "a_r", "bA", 1, 4, 27},
      {"Conv_2", OpType::kConv, "", "a_r", "b", "", 1, 4, 36},
      {"conv_c", OpType::kConv, "", "s", "c", "", 1, 4, 4},
      {"conv_d", OpType::kConv, "relu6_d", "m", "d6", "", 1, 4, 4},
      {"mm", OpType::kMatMul, "", "f", "mmo", "", 4, 5, 1},
      {"Gemm_14", OpType::kGemm, "", "mmo", "logits", "bG", 1, 3, 5},
  };
  ASSERT_EQ(g.layers.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    const Layer& L = g.layers[i];
    const Want& w = want[i];
    SCOPED_TRACE("layer " + std::to_string(i) + " (" + w.name + ")");
    EXPECT_EQ(L.index, static_cast<int>(i));
    EXPECT_EQ(L.name, w.name);
    ASSERT_GE(L.node, 0);
    EXPECT_EQ(g.nodes[L.node].name, w.name);
    EXPECT_EQ(g.nodes[L.node].op, w.op);
    if (w.act.empty()) {
      EXPECT_EQ(L.act_node, -1);
    } else {
      ASSERT_GE(L.act_node, 0);
      EXPECT_EQ(g.nodes[L.act_node].name, w.act);
    }
    EXPECT_EQ(L.input_value, find_value(g, w.input));
    EXPECT_EQ(L.output_value, find_value(g, w.output));
    EXPECT_EQ(L.weight_value, g.nodes[L.node].inputs[1]);
    EXPECT_EQ(L.bias_value, w.bias.empty() ? -1 : find_value(g, w.bias));
    EXPECT_EQ(L.w_outer, w.outer);
    EXPECT_EQ(L.w_channels, w.channels);
    EXPECT_EQ(L.w_inner, w.inner);
    // Layers are numbered in node order.
    if (i > 0) EXPECT_GT(L.node, g.layers[i - 1].node);
  }
  EXPECT_EQ(g.layers.back().output_value, g.output);
  EXPECT_EQ(g.input, find_value(g, "x"));
  EXPECT_EQ(g.input_shape, (Shape{3, 8, 8}));
  // The other generated names: "<OpType>_<position in the ONNX node list>" (Constant
  // nodes count, as they are in the list).
  EXPECT_GE(find_node(g, "GlobalAveragePool_11"), 0);
  EXPECT_GE(find_node(g, "Flatten_12"), 0);
  // Clip's constant bounds are attributes of the node.
  const Node& clip = g.nodes[find_node(g, "relu6_d")];
  EXPECT_EQ(clip.attrs.act_alpha, 0.0f);
  EXPECT_EQ(clip.attrs.act_beta, 6.0f);
  // Stable: the same file gives the same names.
  const Graph g2 = import_onnx_bytes(layered_model(), "test.onnx");
  ASSERT_EQ(g2.layers.size(), g.layers.size());
  for (size_t i = 0; i < g.layers.size(); ++i) EXPECT_EQ(g2.layers[i].name, g.layers[i].name);

  // And the graph runs: (2, 3) logits.
  std::mt19937 rng(22);
  const Tensor y = run_graph(g, random_tensor(rng, {2, 3, 8, 8}));
  EXPECT_EQ(y.shape, (Shape{2, 3}));
}

TEST(Layers, GemmWithoutTransBIsKByN) {
  std::mt19937 rng(23);
  OnnxBuilder b;
  b.input("x", {6})
      .initializer("w", uniform(rng, 6 * 4), {6, 4})
      .node("Gemm", {"x", "w"}, {"h"}, {}, "fc1")
      .node("Sigmoid", {"h"}, {"y"}, {}, "sig")
      .output("y");
  const Graph g = import_onnx_bytes(b.serialize(), "test.onnx");
  ASSERT_EQ(g.layers.size(), 1u);
  const Layer& L = g.layers[0];
  EXPECT_EQ(L.name, "fc1");
  EXPECT_EQ(L.w_outer, 6);
  EXPECT_EQ(L.w_channels, 4);
  EXPECT_EQ(L.w_inner, 1);
  EXPECT_EQ(L.bias_value, -1);
  // An activation that produces the graph output is still fused.
  EXPECT_EQ(L.act_node, find_node(g, "sig"));
  EXPECT_EQ(L.output_value, g.output);
}

TEST(Layers, ConvOutputFeedingActivationAndAnotherNodeIsNotFused) {
  // Relu consumes the conv output, but the conv output also feeds an Add next to it: the
  // activation does not *solely* consume it.
  std::mt19937 rng(24);
  OnnxBuilder b;
  b.input("x", {2, 4, 4})
      .initializer("w", uniform(rng, 4), {2, 2, 1, 1})
      .node("Conv", {"x", "w"}, {"c"}, {}, "conv")
      .node("Relu", {"c"}, {"r"}, {}, "relu")
      .node("Add", {"r", "c"}, {"y"}, {}, "add")
      .output("y");
  const Graph g = import_onnx_bytes(b.serialize(), "test.onnx");
  ASSERT_EQ(g.layers.size(), 1u);
  EXPECT_EQ(g.layers[0].act_node, -1);
  EXPECT_EQ(g.layers[0].output_value, find_value(g, "c"));
}

TEST(Layers, ConvWhoseOutputIsTheGraphOutputIsNotFused) {
  // The conv's output is the graph output; nothing may be fused after it.
  std::mt19937 rng(25);
  OnnxBuilder b;
  b.input("x", {2, 4, 4})
      .initializer("w", uniform(rng, 4), {2, 2, 1, 1})
      .node("Conv", {"x", "w"}, {"y"}, {}, "conv")
      .output("y");
  const Graph g = import_onnx_bytes(b.serialize(), "test.onnx");
  ASSERT_EQ(g.layers.size(), 1u);
  EXPECT_EQ(g.layers[0].act_node, -1);
  EXPECT_EQ(g.layers[0].output_value, g.output);
}

TEST(Layers, MatMulOfTwoActivationsIsRejected) {
  OnnxBuilder b;
  b.input("x", {4, 4})
      .node("Relu", {"x"}, {"r"}, {}, "relu")
      .node("MatMul", {"x", "r"}, {"y"}, {}, "attention_scores")
      .output("y");
  const std::string msg = import_error(b.serialize(), "attn.onnx");
  expect_contains(msg, {"attn.onnx", "attention_scores", "MatMul", "two activations"});
}

TEST(Layers, InitializerListedAsGraphInputIsAConstant) {
  // Older exporters list every initializer among the graph inputs too.
  std::mt19937 rng(26);
  OnnxBuilder b;
  b.input("x", {2, 3, 3}).initializer("w", uniform(rng, 4 * 2 * 9), {4, 2, 3, 3});
  auto* wi = b.model().mutable_graph()->add_input();
  wi->set_name("w");
  auto* tt = wi->mutable_type()->mutable_tensor_type();
  tt->set_elem_type(onnx::TensorProto::FLOAT);
  for (int64_t d : {4, 2, 3, 3}) tt->mutable_shape()->add_dim()->set_dim_value(d);
  b.node("Conv", {"x", "w"}, {"y"}, {}, "conv").output("y");
  const Graph g = import_onnx_bytes(b.serialize(), "test.onnx");
  EXPECT_EQ(g.input, find_value(g, "x"));
  ASSERT_EQ(g.layers.size(), 1u);
  EXPECT_TRUE(g.values[g.layers[0].weight_value].is_constant);
}

// ---------------------------------------------------------------- errors

TEST(ImportErrors, UnsupportedOpNamesNodeOpAndSupportedOps) {
  OnnxBuilder b;
  b.input("x", {4}).node("Tanh", {"x"}, {"y"}, {}, "my_tanh").output("y");
  const std::string msg = import_error(b.serialize(), "tanh.onnx");
  expect_contains(msg, {"tanh.onnx", "my_tanh", "'Tanh'", "supported", "Conv", "Relu", "Gemm", "MaxPool"});
  // supported_onnx_ops() is the list the message shows.
  expect_contains(msg, {supported_onnx_ops()});
}

TEST(ImportErrors, UnknownOpNamesNodeAndOp) {
  // An op type no ONNX opset defines (a typo, or a custom op put in the default domain).
  OnnxBuilder b;
  b.input("x", {4}).node("FancyActivation", {"x"}, {"y"}, {}, "my_fancy").output("y");
  expect_contains(import_error(b.serialize(), "fancy.onnx"), {"fancy.onnx", "my_fancy", "FancyActivation"});
}

TEST(ImportErrors, CustomDomainOpNamesNodeOpAndDomain) {
  OnnxBuilder b;
  auto* op = b.model().add_opset_import();
  op->set_domain("com.example");
  op->set_version(1);
  b.input("x", {4}).node("Gelu", {"x"}, {"y"}, {}, "gelu_custom").output("y");
  b.model().mutable_graph()->mutable_node(0)->set_domain("com.example");
  expect_contains(import_error(b.serialize(), "custom.onnx"), {"custom.onnx", "gelu_custom", "Gelu", "com.example"});
}

TEST(ImportErrors, UnnamedUnsupportedNodeGetsItsGeneratedName) {
  OnnxBuilder b;
  b.input("x", {4}).node("Relu", {"x"}, {"r"}).node("Tanh", {"r"}, {"y"}).output("y");
  expect_contains(import_error(b.serialize()), {"Tanh_1", "Tanh"});
}

TEST(ImportErrors, NonTopologicalOrderNamesTheNode) {
  // "late_relu" reads "r", which only a later node produces.
  OnnxBuilder b;
  b.input("x", {4})
      .node("Relu", {"r"}, {"y"}, {}, "late_relu")
      .node("Relu", {"x"}, {"r"}, {}, "early_relu")
      .output("y");
  const std::string msg = import_error(b.serialize(), "order.onnx");
  expect_contains(msg, {"order.onnx", "topological", "late_relu"});
}

TEST(ImportErrors, MissingFile) {
  const std::string path = "/nonexistent-qsweep-dir/model.onnx";
  try {
    import_onnx(path);
    ADD_FAILURE() << "import_onnx accepted a missing file";
  } catch (const UserError& e) {
    expect_contains(e.what(), {path, "does not exist"});
  }
}

TEST(ImportErrors, BytesThatAreNotOnnx) {
  // 0x00 is never a valid protobuf tag (field number 0), so parsing fails.
  const std::string bytes("\x00\x01garbage, not a model", 22);
  expect_contains(import_error(bytes, "junk.onnx"), {"junk.onnx", "not a valid ONNX model"});
}

class OpsetOutOfRange : public ::testing::TestWithParam<int> {};

TEST_P(OpsetOutOfRange, IsRejected) {
  const int opset = GetParam();
  OnnxBuilder b(opset);
  b.input("x", {4}).node("Relu", {"x"}, {"y"}, {}, "relu").output("y");
  expect_contains(import_error(b.serialize(), "old.onnx"),
                  {"old.onnx", "opset " + std::to_string(opset), "opsets 11 to 17"});
}

INSTANTIATE_TEST_SUITE_P(TooOldAndTooNew, OpsetOutOfRange, ::testing::Values(10, 18));

TEST(ImportErrors, OpsetsElevenAndSeventeenAreAccepted) {
  for (int opset : {11, 17}) {
    OnnxBuilder b(opset);
    b.input("x", {4}).node("Relu", {"x"}, {"y"}, {}, "relu").output("y");
    EXPECT_EQ(import_onnx_bytes(b.serialize(), "test.onnx").opset, opset);
  }
}

TEST(ImportErrors, ConvWeightThatIsNotAConstant) {
  OnnxBuilder b;
  b.input("x", {2, 3, 3})
      .node("Relu", {"x"}, {"r"}, {}, "relu")
      .node("Conv", {"x", "r"}, {"y"}, {}, "dynamic_conv")
      .output("y");
  expect_contains(import_error(b.serialize(), "dyn.onnx"), {"dyn.onnx", "dynamic_conv", "Conv", "weight", "constant"});
}

TEST(ImportErrors, MoreThanOneGraphInput) {
  OnnxBuilder b;
  b.input("x", {4}).input("x2", {4}).node("Add", {"x", "x2"}, {"y"}, {}, "add").output("y");
  expect_contains(import_error(b.serialize(), "two.onnx"), {"two.onnx", "2 non-constant inputs", "exactly one"});
}

// Malformed models (found by fuzzing): each is refused with one sentence naming the node and
// what is accepted, before ONNX's shape inference or a kernel could divide by zero, read past a
// buffer or allocate without bound.
struct Malformed {
  const char* what;
  std::function<void(OnnxBuilder&)> build;  // after input "x" (1x6x6)
  std::vector<std::string> message;
};

TEST(ImportErrors, MalformedModelsAreOneSentenceNamingTheNode) {
  const std::vector<float> w4(4 * 9, 0.1f);
  auto conv = [&](std::vector<onnx::AttributeProto> attrs, std::vector<float> bias = {}) {
    return [=](OnnxBuilder& b) {
      b.initializer("w", w4, {4, 1, 3, 3});
      std::vector<std::string> in{"x", "w"};
      if (!bias.empty()) {
        b.initializer("b", bias, {static_cast<int64_t>(bias.size())});
        in.push_back("b");
      }
      b.node("Conv", in, {"y"}, attrs, "c").output("y");
    };
  };
  const std::vector<Malformed> cases = {
      {"stride 0", conv({attr_ints("strides", {0, 1})}), {"'c' (Conv)", "strides [0, 1]", "1 to 65536"}},
      {"dilation 0", conv({attr_ints("dilations", {1, 0})}), {"'c' (Conv)", "dilations [1, 0]"}},
      {"negative pads", conv({attr_ints("pads", {-1, 0, 0, 0})}), {"'c' (Conv)", "pads [-1, 0, 0, 0]", "0 to 65536"}},
      {"huge pads", conv({attr_ints("pads", {100000, 0, 0, 0})}), {"'c' (Conv)", "pads [100000, 0, 0, 0]"}},
      {"short bias", conv({}, {1.0f, 2.0f}), {"'c' (Conv)", "bias of shape (2)", "4 output channels", "(4)"}},
      {"group not dividing", conv({attr_i("group", 3)}), {"'c' (Conv)", "group 3 for 4 output channels"}},
      {"pool kernel 0",
       [](OnnxBuilder& b) { b.node("MaxPool", {"x"}, {"y"}, {attr_ints("kernel_shape", {0, 2})}, "p").output("y"); },
       {"'p' (MaxPool)", "kernel_shape [0, 2]"}},
      {"zero-size weight",
       [](OnnxBuilder& b) {
         b.initializer("w", {}, {0, 1, 3, 3}).node("Conv", {"x", "w"}, {"y"}, {}, "c").output("y");
       },
       {"'c' (Conv)", "weight of shape (0, 1, 3, 3)", "at least 1"}},
      {"Gemm bias per row",
       [](OnnxBuilder& b) {
         b.node("Flatten", {"x"}, {"f"}, {}, "flat")
             .initializer("w", std::vector<float>(36 * 5, 0.1f), {36, 5})
             .initializer("c", std::vector<float>(10, 0.0f), {2, 5})
             .node("Gemm", {"f", "w", "c"}, {"y"}, {}, "fc")
             .output("y");
         auto* shape = b.model().mutable_graph()->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
         shape->add_dim();  // (N, 5): rank 2, not the input's rank
         shape->add_dim()->set_dim_value(5);
       },
       {"'fc' (Gemm)", "bias C of shape (2, 5)", "(5) or (1, 5)"}},
      {"Clip bound NaN",
       [](OnnxBuilder& b) {
         b.initializer("lo", {NAN}, {}).initializer("hi", {1.0f}, {}).node("Clip", {"x", "lo", "hi"}, {"y"}, {}, "clip");
         b.output("y");
       },
       {"'clip' (Clip)", "min nan and max 1", "must be numbers"}},
      {"Clip empty min",
       [](OnnxBuilder& b) {
         b.initializer("lo", {}, {0}).node("Clip", {"x", "lo"}, {"y"}, {}, "clip").output("y");
       },
       {"'clip' (Clip)", "min of shape (0)", "one value"}},
      {"Concat over the batch",
       [](OnnxBuilder& b) {
         b.node("Relu", {"x"}, {"r"}).node("Concat", {"x", "r"}, {"y"}, {attr_i("axis", 0)}, "cat").output("y");
       },
       {"'cat' (Concat)", "axis 0, the batch"}},
      {"Pad over the batch",
       [](OnnxBuilder& b) {
         b.int64_initializer("pads", {1, 0, 0, 0, 0, 0, 0, 0}).node("Pad", {"x", "pads"}, {"y"}, {}, "pad").output("y");
       },
       {"'pad' (Pad)", "axis 0, the batch"}},
      {"negative pad (a crop; refused at run time only, leaving a results folder)",
       [](OnnxBuilder& b) {
         b.int64_initializer("pads", {0, 0, 0, -1, 0, 0, 1, 2}).node("Pad", {"x", "pads"}, {"y"}, {}, "pad").output("y");
       },
       {"'pad' (Pad) pads by -1; each amount must be 0 to 65536 (a negative pad crops"}},
      {"negative variance",
       [](OnnxBuilder& b) {
         b.initializer("g", {1.0f}, {1}).initializer("be", {0.0f}, {1}).initializer("m", {0.0f}, {1});
         b.initializer("v", {-1.0f}, {1}).node("BatchNormalization", {"x", "g", "be", "m", "v"}, {"y"}, {}, "bn");
         b.output("y");
       },
       {"'bn' (BatchNormalization)", "running variance -1", "positive"}},
      {"output is the input", [](OnnxBuilder& b) { b.output("x"); }, {"graph output 'x' is its input"}},
      {"an activation too large to compute",  // (4, 20004, 20004) per image
       [&](OnnxBuilder& b) {
         b.initializer("w", w4, {4, 1, 3, 3}).node("Conv", {"x", "w"}, {"c"}, {attr_ints("pads", {10000, 10000, 10000, 10000})}, "big");
         b.node("Relu", {"c"}, {"y"}, {}, "relu").output("y");
       },
       {"value 'c' (output of node 'big', Conv)", "more than 2^28 values per image"}},
  };
  for (const auto& c : cases) {
    SCOPED_TRACE(c.what);
    OnnxBuilder b;
    b.input("x", {1, 6, 6});
    c.build(b);
    const std::string msg = import_error(b.serialize(/*infer=*/false), "bad.onnx");
    EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
    expect_contains(msg, c.message);
  }
}

// Raw data that is not a whole number of values, and declared shapes that are negative or too
// large to allocate, are refused before any allocation.
TEST(ImportErrors, InitializerDataMustMatchItsDeclaredShape) {
  auto with = [](const std::function<void(onnx::TensorProto&)>& set) {
    OnnxBuilder b;
    b.input("x", {1, 4, 4}).initializer("w", std::vector<float>(9, 0.5f), {1, 1, 3, 3});
    b.node("Conv", {"x", "w"}, {"y"}, {}, "c").output("y");
    set(*b.model().mutable_graph()->mutable_initializer(0));
    return import_error(b.serialize(false), "t.onnx");
  };
  expect_contains(with([](onnx::TensorProto& t) {
                    t.clear_float_data();
                    t.set_raw_data(std::string(37, '\0'));
                  }),
                  {"tensor 'w'", "37 bytes of raw data", "4-byte values"});
  expect_contains(with([](onnx::TensorProto& t) { t.set_dims(0, -1); }), {"tensor 'w'", "(-1, 1, 3, 3)", "0 or more"});
  expect_contains(with([](onnx::TensorProto& t) { t.set_dims(0, int64_t{1} << 40); }), {"tensor 'w'", "2^34 values"});
  // Dims whose product wraps around int64 to the value count.
  expect_contains(with([](onnx::TensorProto& t) {
                    t.set_dims(0, (int64_t{1} << 62) + 1);
                    t.set_dims(1, 4);
                  }),
                  {"tensor 'w'", "2^34 values"});
}

// NaN or infinite weights, biases or other constant operands are refused at import, naming
// the constant, its node and the first bad value; Clip's bounds may be infinite.
TEST(ImportErrors, NonFiniteConstantsAreRefused) {
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  auto conv_with = [&](std::vector<float> w, std::vector<float> bias) {
    OnnxBuilder b;
    b.input("x", {1, 4, 4}).initializer("w", std::move(w), {1, 1, 3, 3}).initializer("b", std::move(bias), {1});
    b.node("Conv", {"x", "w", "b"}, {"y"}, {}, "conv1").output("y");
    return b.serialize();
  };
  std::vector<float> w(9, 0.5f);
  w[4] = inf;
  expect_contains(import_error(conv_with(w, {0.1f}), "inf.onnx"),
                  {"inf.onnx", "constant 'w'", "node 'conv1' (Conv)", "1 non-finite value", "inf at element 4",
                   "finite weights"});
  w[4] = 0.5f;
  expect_contains(import_error(conv_with(w, {nan}), "nan.onnx"), {"constant 'b'", "node 'conv1'", "nan at element 0"});
  EXPECT_NO_THROW(import_onnx_bytes(conv_with(w, {0.1f}), "ok.onnx"));
  OnnxBuilder c(13);  // Clip(x, 0, +inf): the bounds are not operands of the computation
  c.input("x", {4}).initializer("lo", std::vector<float>{0.0f}, {}).initializer("hi", std::vector<float>{inf}, {});
  c.node("Clip", {"x", "lo", "hi"}, {"y"}, {}, "clip").output("y");
  EXPECT_NO_THROW(import_onnx_bytes(c.serialize(), "clip.onnx"));
}

}  // namespace
}  // namespace qsweep
