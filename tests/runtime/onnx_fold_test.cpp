// Import-time folding of shape and pad computations (runtime/onnx_fold.h), on the node
// sequences torch.onnx.export (1.13, opset 13) writes for F.pad and x.view(x.size(0), -1):
// the folded network equals, bit for bit, the same network written with a constant Pad and a
// Flatten, on batches of several images; what cannot be folded keeps the clear error. Also:
// the IR versions and external data the import accepts or names.
#include "runtime/onnx_fold.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "runtime/cpu_backend.h"
#include "runtime/error.h"
#include "runtime/executor.h"
#include "runtime/onnx_import.h"
#include "tests/runtime/onnx_builder.h"
#include "tests/runtime/run_graph.h"

namespace qsweep {
namespace {

using test::attr_i;
using test::attr_ints;
using test::OnnxBuilder;

// A Constant node's `value` attribute: an int64 tensor of `dims` ({}: a scalar).
onnx::AttributeProto int64_value(const std::vector<int64_t>& v, const std::vector<int64_t>& dims) {
  onnx::AttributeProto a;
  a.set_name("value");
  a.set_type(onnx::AttributeProto::TENSOR);
  onnx::TensorProto* t = a.mutable_t();
  t->set_data_type(onnx::TensorProto::INT64);
  for (int64_t d : dims) t->add_dims(d);
  for (int64_t x : v) t->add_int64_data(x);
  return a;
}

std::vector<float> uniform(std::mt19937& rng, size_t n) {
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

using test::run_graph;

void expect_same_outputs(const Graph& a, const Graph& b, const Shape& shape) {
  std::mt19937 rng(8);
  Tensor x(shape);
  x.data = uniform(rng, x.data.size());
  const Tensor ya = run_graph(a, x), yb = run_graph(b, x);
  ASSERT_EQ(ya.shape, yb.shape);
  for (size_t i = 0; i < ya.data.size(); ++i) ASSERT_EQ(ya.data[i], yb.data[i]) << "output " << i;
}

// F.pad(in, (1, 2, 0, 1)) as torch.onnx.export writes it for a 4-D input: the pad tuple
// extended with zeros, paired, the pairs reversed and transposed into ONNX's
// [N, C, H, W begins, N, C, H, W ends] = [0,0,0,1, 0,0,1,2] (W: 1 before, 2 after; H: 0, 1).
// `end`: the Slice end torch writes (INT64_MIN + 1), or INT64_MIN as other exporters do.
// computed: the count of zeros as an export without constant folding writes it, 4 * 2 minus
// Shape(pads)[0] (Shape of a constant, Mul, Sub).
void add_torch_pads(OnnxBuilder& b, const std::string& in, const std::string& out, const std::string& mode,
                    int64_t end = std::numeric_limits<int64_t>::min() + 1, bool computed = false) {
  b.node("Constant", {}, {"k1"}, {int64_value({1, 2, 0, 1}, {4})});
  if (computed) {
    b.node("Shape", {"k1"}, {"k1_shape"}).node("Constant", {}, {"first"}, {int64_value({0}, {})});
    b.node("Gather", {"k1_shape", "first"}, {"k1_len"}, {attr_i("axis", 0)});
    b.node("Constant", {}, {"rank"}, {int64_value({4}, {})}).node("Constant", {}, {"two"}, {int64_value({2}, {})});
    b.node("Mul", {"rank", "two"}, {"all"}).node("Sub", {"all", "k1_len"}, {"zeros_n"});
    b.node("Constant", {}, {"one"}, {int64_value({0}, {1})}).node("Unsqueeze", {"zeros_n", "one"}, {"k0"});
  } else {
    b.node("Constant", {}, {"k0"}, {int64_value({4}, {1})});
  }
  onnx::AttributeProto zero = int64_value({0}, {1});
  b.node("ConstantOfShape", {"k0"}, {"zeros"}, {zero});
  b.node("Concat", {"k1", "zeros"}, {"cat"}, {attr_i("axis", 0)});
  b.node("Constant", {}, {"k2"}, {int64_value({-1, 2}, {2})});
  b.node("Reshape", {"cat", "k2"}, {"pairs"});
  b.node("Constant", {}, {"k4"}, {int64_value({-1}, {1})});
  b.node("Constant", {}, {"k5"}, {int64_value({end}, {1})});
  b.node("Constant", {}, {"k3"}, {int64_value({0}, {1})});
  b.node("Constant", {}, {"k6"}, {int64_value({-1}, {1})});
  b.node("Slice", {"pairs", "k4", "k5", "k3", "k6"}, {"rev"});
  b.node("Transpose", {"rev"}, {"tr"}, {attr_ints("perm", {1, 0})});
  b.node("Constant", {}, {"k7"}, {int64_value({-1}, {1})});
  b.node("Reshape", {"tr", "k7"}, {"flat_pads"});
  b.node("Cast", {"flat_pads"}, {"pads"}, {attr_i("to", onnx::TensorProto::INT64)});
  b.node("Pad", {in, "pads"}, {out}, {test::attr_s("mode", mode)}, "pad");
}

// x.view(x.size(0), -1) as torch.onnx.export writes it with a dynamic batch (Shape -> Gather
// 0 -> Unsqueeze -> Concat [-1] -> Reshape); batch_last: [-1, N] instead, which no constant
// can say.
void add_torch_view(OnnxBuilder& b, const std::string& in, const std::string& out, bool batch_last = false) {
  b.node("Shape", {in}, {"shape"});
  b.node("Constant", {}, {"zero"}, {int64_value({0}, {})});
  b.node("Gather", {"shape", "zero"}, {"n"}, {attr_i("axis", 0)});
  b.node("Constant", {}, {"axes"}, {int64_value({0}, {1})});
  b.node("Unsqueeze", {"n", "axes"}, {"n1"});
  b.node("Constant", {}, {"rest"}, {int64_value({-1}, {1})});
  b.node("Concat", batch_last ? std::vector<std::string>{"rest", "n1"} : std::vector<std::string>{"n1", "rest"},
         {"target"}, {attr_i("axis", 0)});
  b.node("Reshape", {in, "target"}, {out}, {}, "view");
}

// The model's bytes with its output declared (N, classes), as the exporter does: shape
// inference cannot see through a Reshape to a computed shape.
std::string with_output_shape(const OnnxBuilder& b, int64_t classes) {
  onnx::ModelProto m;
  EXPECT_TRUE(m.ParseFromString(b.serialize(false)));
  auto* shape = m.mutable_graph()->mutable_output(0)->mutable_type()->mutable_tensor_type()->mutable_shape();
  shape->clear_dim();
  shape->add_dim()->set_dim_param("N");
  shape->add_dim()->set_dim_value(classes);
  return m.SerializeAsString();
}

// Conv -> Relu -> F.pad(x, (1, 2, 0, 1)) -> Conv -> flatten -> Gemm; `torch` writes the pads
// (and with `view` the flatten) as torch.onnx.export does, else as one constant Pad and a
// Flatten.
std::string padded_model(bool torch, const std::string& mode, bool view = false,
                         int64_t end = std::numeric_limits<int64_t>::min() + 1, bool computed = false) {
  std::mt19937 rng(3);
  OnnxBuilder b;
  b.input("x", {1, 6, 6}).initializer("w1", uniform(rng, 4 * 9), {4, 1, 3, 3});
  b.initializer("w2", uniform(rng, 4 * 4 * 9), {4, 4, 3, 3}).initializer("fc", uniform(rng, 4 * 5 * 7 * 3), {140, 3});
  b.node("Conv", {"x", "w1"}, {"c1"}, {attr_ints("pads", {1, 1, 1, 1})}, "conv1").node("Relu", {"c1"}, {"r1"});
  if (torch) {
    add_torch_pads(b, "r1", "p", mode, end, computed);
  } else {
    b.int64_initializer("pads", {0, 0, 0, 1, 0, 0, 1, 2});
    b.node("Pad", {"r1", "pads"}, {"p"}, {test::attr_s("mode", mode)}, "pad");
  }
  b.node("Conv", {"p", "w2"}, {"c2"}, {}, "conv2");
  if (torch && view) add_torch_view(b, "c2", "f");
  else b.node("Flatten", {"c2"}, {"f"});
  b.node("Gemm", {"f", "fc"}, {"y"}, {}, "fc").output("y");
  return view ? with_output_shape(b, 3) : b.serialize();
}

TEST(OnnxFold, TorchPadAmountsFoldToTheConstantPad) {
  for (const char* mode : {"constant", "reflect"}) {
    SCOPED_TRACE(mode);
    const Graph torch = import_onnx_bytes(padded_model(true, mode), "torch_pad.onnx");
    const Graph plain = import_onnx_bytes(padded_model(false, mode), "plain_pad.onnx");
    ASSERT_EQ(torch.nodes.size(), plain.nodes.size());
    expect_same_outputs(torch, plain, {3, 1, 6, 6});
  }
  // A Slice to the start written with INT64_MIN (review: the value was the batch size's
  // sentinel, so such pads were not folded).
  const Graph min_end = import_onnx_bytes(padded_model(true, "constant", false, std::numeric_limits<int64_t>::min()),
                                          "min_end.onnx");
  expect_same_outputs(min_end, import_onnx_bytes(padded_model(false, "constant"), "plain.onnx"), {2, 1, 6, 6});
  // Exported without constant folding: the count of zeros computed with Shape, Mul and Sub
  // (review: refused at the Sub).
  const Graph computed = import_onnx_bytes(
      padded_model(true, "constant", false, std::numeric_limits<int64_t>::min() + 1, true), "computed.onnx");
  expect_same_outputs(computed, import_onnx_bytes(padded_model(false, "constant"), "plain.onnx"), {2, 1, 6, 6});
}

// Add, Sub and Mul of constants fold with NumPy broadcasting: (2, 1) + (1, 3) is (2, 3); in
// float32 for float tensors; the product feeds a run-time Mul, so it becomes an initializer.
TEST(OnnxFold, ArithmeticOnConstantsBroadcasts) {
  OnnxBuilder b;
  b.input("x", {2, 3}).initializer("a", {1.0f, 2.0f}, {2, 1}).initializer("c", {10.0f, 20.0f, 30.0f}, {1, 3});
  b.initializer("third", {1.0f / 3.0f}, {});
  b.node("Add", {"a", "c"}, {"sum"}).node("Mul", {"sum", "third"}, {"k"}).node("Shape", {"x"}, {"s"});
  b.node("Mul", {"x", "k"}, {"xk"}).node("Flatten", {"xk"}, {"f"});
  b.initializer("w", std::vector<float>(6 * 2, 0.5f), {6, 2}).node("Gemm", {"f", "w"}, {"y"}, {}, "fc").output("y");
  onnx::ModelProto m;
  ASSERT_TRUE(m.ParseFromString(b.serialize()));
  // The Add, the first Mul, and the Shape (which makes the fold run at all; nothing reads it).
  EXPECT_EQ(fold_shape_computations(m), 3);
  std::vector<float> k;
  for (const auto& init : m.graph().initializer()) {
    if (init.name() == "k") k.assign(init.float_data().begin(), init.float_data().end());
  }
  const float third = 1.0f / 3.0f;
  EXPECT_EQ(k, (std::vector<float>{11 * third, 21 * third, 31 * third, 12 * third, 22 * third, 32 * third}));
}

// Conv -> Relu -> x.view(x.size(0), -1) -> Gemm: variant 0 with a Flatten, 1 with the
// view as torch.onnx.export writes it, 2 with the batch size last ([-1, N]).
std::string viewed_model(int variant) {
  std::mt19937 rng(4);
  OnnxBuilder b;
  b.input("x", {2, 5, 5}).initializer("w", uniform(rng, 3 * 2 * 9), {3, 2, 3, 3});
  b.initializer("fc", uniform(rng, 27 * 4), {27, 4});
  b.node("Conv", {"x", "w"}, {"c"}, {}, "conv").node("Relu", {"c"}, {"r"});
  if (variant == 0) b.node("Flatten", {"r"}, {"f"});
  else add_torch_view(b, "r", "f", variant == 2);
  b.node("Gemm", {"f", "fc"}, {"y"}, {}, "fc").output("y");
  return with_output_shape(b, 4);
}

TEST(OnnxFold, TorchViewOfTheBatchSizeFoldsToAReshapeThatCopiesIt) {
  const Graph torch = import_onnx_bytes(viewed_model(1), "torch_view.onnx");
  const Graph plain = import_onnx_bytes(viewed_model(0), "flatten.onnx");
  expect_same_outputs(torch, plain, {4, 2, 5, 5});
  expect_same_outputs(torch, plain, {1, 2, 5, 5});
  // The fold itself: the shape nodes are gone, the Reshape reads a constant [0, -1].
  onnx::ModelProto m;
  ASSERT_TRUE(m.ParseFromString(viewed_model(1)));
  EXPECT_EQ(fold_shape_computations(m), 7);  // Shape, Gather, Unsqueeze, Concat and 3 Constants
  ASSERT_EQ(m.graph().node_size(), 4);
  EXPECT_EQ(m.graph().node(2).op_type(), "Reshape");
  const std::string target = m.graph().node(2).input(1);
  bool found = false;
  for (const auto& init : m.graph().initializer()) {
    if (init.name() != target) continue;
    found = true;
    EXPECT_EQ(std::vector<int64_t>(init.int64_data().begin(), init.int64_data().end()), (std::vector<int64_t>{0, -1}));
  }
  EXPECT_TRUE(found) << target;
}

// Where the batch size would have to be a constant anywhere else, nothing is folded and the
// error names the first node qsweep does not run, with what to do.
TEST(OnnxFold, WhatCannotBeFoldedKeepsTheClearError) {
  onnx::ModelProto m;
  ASSERT_TRUE(m.ParseFromString(viewed_model(2)));
  EXPECT_EQ(fold_shape_computations(m), 0);
  EXPECT_EQ(m.graph().node_size(), 11);
  try {
    import_onnx_bytes(viewed_model(2), "batch_last.onnx");
    ADD_FAILURE() << "imported";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("node 'Shape_2' has op 'Shape', which qsweep does not support"), std::string::npos) << msg;
    EXPECT_NE(msg.find("write torch.flatten(x, 1) where a flatten is meant"), std::string::npos) << msg;
  }
}

// F.pad then x.view(x.size(0), -1): the view's Shape is sized only once the pads are
// constants, so folding takes two passes (audit: every such export was refused).
TEST(OnnxFold, PadsThenAViewFoldInTwoPasses) {
  const Graph torch = import_onnx_bytes(padded_model(true, "constant", true), "pad_view.onnx");
  const Graph plain = import_onnx_bytes(padded_model(false, "constant"), "plain.onnx");
  ASSERT_EQ(torch.nodes.size(), plain.nodes.size());
  expect_same_outputs(torch, plain, {3, 1, 6, 6});
}

// A Shape whose first dimension is not the batch (here of reshape(-1, 3): (N*9, 3)) is not
// folded into a Reshape's "copy the first dimension" (audit: a network of other shapes,
// silently); it stays refused.
TEST(OnnxFold, AShapeOfAnotherFirstDimensionIsNotTheBatch) {
  std::mt19937 rng(5);
  OnnxBuilder b;
  b.input("x", {3, 3, 3}).initializer("fc", uniform(rng, 27 * 2), {27, 2});
  b.int64_initializer("rows", {-1, 3});
  b.node("Reshape", {"x", "rows"}, {"r"}, {}, "rows");  // (N*9, 3)
  add_torch_view(b, "r", "v");                           // view(r.size(0), -1): (N*9, 3) again
  b.int64_initializer("back", {-1, 27});
  b.node("Reshape", {"v", "back"}, {"f"}, {}, "back").node("Gemm", {"f", "fc"}, {"y"}, {}, "fc").output("y");
  onnx::ModelProto m;
  ASSERT_TRUE(m.ParseFromString(with_output_shape(b, 2)));
  fold_shape_computations(m);  // the Constants may become initializers; the Shape stays
  EXPECT_EQ(std::count_if(m.graph().node().begin(), m.graph().node().end(),
                          [](const onnx::NodeProto& n) { return n.op_type() == "Shape" || n.op_type() == "Gather"; }),
            2);
  try {
    import_onnx_bytes(with_output_shape(b, 2), "other_first.onnx");
    ADD_FAILURE() << "imported";
  } catch (const UserError& e) {
    const std::string msg = e.what();
    EXPECT_EQ(msg.rfind("other_first.onnx: node 'Shape_1' (Shape) reads 'r', whose first dimension (", 0), 0u) << msg;
    EXPECT_NE(msg.find("is not the batch; qsweep folds the sizes a model computes only from and into values that "
                       "start with the batch ('N')"),
              std::string::npos)
        << msg;
  }
  // The other way round: the size from x (batch first) into a Reshape of r ((N*9, 3)), as
  // r.view(x.size(0), -1) has it: the Reshape is named.
  OnnxBuilder c;
  c.input("x", {3, 3, 3}).initializer("fc", uniform(rng, 27 * 2), {27, 2}).int64_initializer("rows", {-1, 3});
  c.node("Reshape", {"x", "rows"}, {"r"}, {}, "rows").node("Shape", {"x"}, {"shape"});
  c.node("Constant", {}, {"zero"}, {int64_value({0}, {})}).node("Gather", {"shape", "zero"}, {"n"}, {attr_i("axis", 0)});
  c.node("Constant", {}, {"axes"}, {int64_value({0}, {1})}).node("Unsqueeze", {"n", "axes"}, {"n1"});
  c.node("Constant", {}, {"rest"}, {int64_value({-1}, {1})}).node("Concat", {"n1", "rest"}, {"target"}, {attr_i("axis", 0)});
  c.node("Reshape", {"r", "target"}, {"f"}, {}, "view").node("Gemm", {"f", "fc"}, {"y"}, {}, "fc").output("y");
  try {
    import_onnx_bytes(with_output_shape(c, 2), "into_other.onnx");
    ADD_FAILURE() << "imported";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("into_other.onnx: node 'view' (Reshape) reshapes 'r', whose first dimension (",
                                          0),
              0u)
        << e.what();
  }
}

// Window attributes shape inference divides by are checked before the fold runs it (review: a
// Conv with strides 0 before a Cast, which enables folding, died of SIGFPE).
TEST(OnnxFold, BadWindowsAreRefusedBeforeShapeInference) {
  std::mt19937 rng(6);
  OnnxBuilder b;
  b.input("x", {1, 6, 6}).initializer("w", uniform(rng, 9), {1, 1, 3, 3});
  b.node("Conv", {"x", "w"}, {"c"}, {attr_ints("strides", {0, 0})}, "conv");
  b.node("Cast", {"c"}, {"y"}, {attr_i("to", onnx::TensorProto::FLOAT)}, "cast").output("y");
  try {
    import_onnx_bytes(b.serialize(false), "stride0.onnx");
    ADD_FAILURE() << "imported";
  } catch (const UserError& e) {
    EXPECT_NE(std::string(e.what()).find("'conv' (Conv)"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("strides [0, 0]"), std::string::npos) << e.what();
  }
}

// IR versions 9 and 10 (what newer onnx helpers write) import like 8; a later one is one
// sentence (the ONNX library here said "Your model ir_version is higher than the checker's").
TEST(OnnxImportVersions, IrVersionsUpToTenImport) {
  onnx::ModelProto m;
  ASSERT_TRUE(m.ParseFromString(viewed_model(0)));
  for (int ir : {9, 10}) {
    m.set_ir_version(ir);
    EXPECT_EQ(import_onnx_bytes(m.SerializeAsString(), "ir.onnx").layers.size(), 2u) << ir;
  }
  m.set_ir_version(11);
  try {
    import_onnx_bytes(m.SerializeAsString(), "ir11.onnx");
    ADD_FAILURE() << "IR version 11 imported";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()).rfind("ir11.onnx: the model has ONNX IR version 11; qsweep reads IR versions up "
                                          "to 10", 0),
              0u)
        << e.what();
  }
}

// A tensor stored outside the .onnx file gets qsweep's sentence, not the checker's (which
// looks for the data file relative to the working folder and calls it missing).
TEST(OnnxImportVersions, ExternalDataIsNamedBeforeTheChecker) {
  onnx::ModelProto m;
  ASSERT_TRUE(m.ParseFromString(viewed_model(0)));
  onnx::TensorProto& w = *m.mutable_graph()->mutable_initializer(0);
  w.clear_float_data();
  w.set_data_location(onnx::TensorProto::EXTERNAL);
  auto* loc = w.add_external_data();
  loc->set_key("location");
  loc->set_value("weights.bin");
  try {
    import_onnx_bytes(m.SerializeAsString(), "ext.onnx");
    ADD_FAILURE() << "imported";
  } catch (const UserError& e) {
    EXPECT_EQ(std::string(e.what()), "ext.onnx: tensor 'w' uses external data, which qsweep does not load; save the "
                                     "model with all tensors inside the .onnx file");
  }
}

}  // namespace
}  // namespace qsweep
