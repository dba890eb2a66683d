// Builds small ONNX models in memory for tests: one float graph input (N symbolic, the
// other dims fixed), float and int64 initializers, nodes with attributes, one float output.
// The result passes onnx::checker (IR version 8, default-domain opset `opset`), so
// qsweep::import_onnx_bytes(builder.serialize(), "test.onnx") imports it.
//
//   OnnxBuilder b;                       // opset 13
//   b.input("x", {3, 8, 8});             // (N, 3, 8, 8)
//   b.initializer("w", w_data, {4, 3, 3, 3});
//   b.node("Conv", {"x", "w"}, {"y"}, {attr_ints("pads", {1, 1, 1, 1})});
//   b.output("y");
//   Graph g = import_onnx_bytes(b.serialize(), "test.onnx");
#pragma once

#include <cstdint>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

namespace qsweep::test {

inline onnx::AttributeProto attr_i(const std::string& name, int64_t v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::INT);
  a.set_i(v);
  return a;
}

inline onnx::AttributeProto attr_f(const std::string& name, float v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::FLOAT);
  a.set_f(v);
  return a;
}

inline onnx::AttributeProto attr_ints(const std::string& name, const std::vector<int64_t>& v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::INTS);
  for (int64_t x : v) a.add_ints(x);
  return a;
}

inline onnx::AttributeProto attr_s(const std::string& name, const std::string& v) {
  onnx::AttributeProto a;
  a.set_name(name);
  a.set_type(onnx::AttributeProto::STRING);
  a.set_s(v);
  return a;
}

class OnnxBuilder {
 public:
  explicit OnnxBuilder(int64_t opset = 13) {
    model_.set_ir_version(8);
    model_.set_producer_name("qsweep-tests");
    auto* op = model_.add_opset_import();
    op->set_domain("");
    op->set_version(opset);
    model_.mutable_graph()->set_name("test");
  }

  // A float32 graph input of shape (N, dims...) with N symbolic.
  OnnxBuilder& input(const std::string& name, const std::vector<int64_t>& dims) {
    auto* vi = model_.mutable_graph()->add_input();
    vi->set_name(name);
    auto* tt = vi->mutable_type()->mutable_tensor_type();
    tt->set_elem_type(onnx::TensorProto::FLOAT);
    auto* shape = tt->mutable_shape();
    shape->add_dim()->set_dim_param("N");
    for (int64_t d : dims) shape->add_dim()->set_dim_value(d);
    return *this;
  }

  // A float32 initializer; data.size() must equal the product of dims ({} = scalar).
  OnnxBuilder& initializer(const std::string& name, const std::vector<float>& data,
                           const std::vector<int64_t>& dims) {
    auto* t = model_.mutable_graph()->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) t->add_dims(d);
    for (float v : data) t->add_float_data(v);
    return *this;
  }

  // An int64 initializer (Reshape shapes, Pad amounts); 1-D of data.size() by default.
  OnnxBuilder& int64_initializer(const std::string& name, const std::vector<int64_t>& data) {
    return int64_initializer(name, data, {static_cast<int64_t>(data.size())});
  }
  OnnxBuilder& int64_initializer(const std::string& name, const std::vector<int64_t>& data,
                                 const std::vector<int64_t>& dims) {
    auto* t = model_.mutable_graph()->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::INT64);
    for (int64_t d : dims) t->add_dims(d);
    for (int64_t v : data) t->add_int64_data(v);
    return *this;
  }

  // A node; an empty input name is an omitted optional input. `name` may be empty (the
  // importer then generates "<OpType>_<position>").
  OnnxBuilder& node(const std::string& op_type, const std::vector<std::string>& inputs,
                    const std::vector<std::string>& outputs,
                    const std::vector<onnx::AttributeProto>& attrs = {},
                    const std::string& name = "") {
    auto* n = model_.mutable_graph()->add_node();
    n->set_op_type(op_type);
    if (!name.empty()) n->set_name(name);
    for (const auto& i : inputs) n->add_input(i);
    for (const auto& o : outputs) n->add_output(o);
    for (const auto& a : attrs) *n->add_attribute() = a;
    return *this;
  }

  // Declares a float32 graph output. The checker wants a shape on main-graph outputs;
  // serialize() takes it from ONNX shape inference.
  OnnxBuilder& output(const std::string& name) {
    auto* vi = model_.mutable_graph()->add_output();
    vi->set_name(name);
    vi->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
    return *this;
  }

  onnx::ModelProto& model() { return model_; }

  // The model's bytes, with each output's shape filled in from shape inference; where
  // inference cannot tell (a broken graph built to test an error), the output gets the
  // graph input's rank with every dimension symbolic.
  // infer = false skips ONNX's shape inference (which a stride of 0 crashes).
  std::string serialize(bool infer = true) const {
    onnx::ModelProto m = model_;
    onnx::ModelProto inferred = model_;
    try {
      if (infer) onnx::shape_inference::InferShapes(inferred);
    } catch (const std::exception&) {
      // leave the fallback below to declare the shapes
    }
    int input_rank = 1;
    if (m.graph().input_size() > 0) input_rank = m.graph().input(0).type().tensor_type().shape().dim_size();
    for (int i = 0; i < m.graph().output_size(); ++i) {
      auto* tt = m.mutable_graph()->mutable_output(i)->mutable_type()->mutable_tensor_type();
      if (tt->has_shape()) continue;
      const auto& it = inferred.graph().output(i).type().tensor_type();
      if (it.has_shape()) {
        *tt->mutable_shape() = it.shape();
      } else {
        for (int d = 0; d < input_rank; ++d) tt->mutable_shape()->add_dim();
      }
    }
    return m.SerializeAsString();
  }

 private:
  onnx::ModelProto model_;
};

}  // namespace qsweep::test
