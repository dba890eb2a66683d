#include "runtime/onnx_import.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <unordered_map>

#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>

#include "kernels/cpu/eltwise.h"
#include "runtime/error.h"
#include "runtime/onnx_fold.h"

namespace qsweep {
namespace {

constexpr int kMinOpset = 11;
constexpr int kMaxOpset = 17;
constexpr int64_t kMaxIrVersion = 10;  // ONNX 1.16

const std::map<std::string, OpType>& op_table() {
  static const std::map<std::string, OpType> table = {
      {"Conv", OpType::kConv},
      {"Gemm", OpType::kGemm},
      {"MatMul", OpType::kMatMul},
      {"BatchNormalization", OpType::kBatchNorm},
      {"Relu", OpType::kRelu},
      {"Clip", OpType::kClip},
      {"LeakyRelu", OpType::kLeakyRelu},
      {"Sigmoid", OpType::kSigmoid},
      {"HardSigmoid", OpType::kHardSigmoid},
      {"HardSwish", OpType::kHardSwish},
      {"Add", OpType::kAdd},
      {"Mul", OpType::kMul},
      {"Concat", OpType::kConcat},
      {"MaxPool", OpType::kMaxPool},
      {"AveragePool", OpType::kAveragePool},
      {"GlobalAveragePool", OpType::kGlobalAveragePool},
      {"Flatten", OpType::kFlatten},
      {"Reshape", OpType::kReshape},
      {"Softmax", OpType::kSoftmax},
      {"Pad", OpType::kPad},
  };
  return table;
}

// Ops handled at import time without a runtime node.
const std::set<std::string>& import_time_ops() {
  static const std::set<std::string> s = {"Identity", "Dropout", "Constant"};
  return s;
}

// Bytes per value of the data types tensor_from_proto reads; 0 for others.
size_t value_bytes(int data_type) {
  switch (data_type) {
    case onnx::TensorProto::FLOAT:
    case onnx::TensorProto::INT32: return 4;
    case onnx::TensorProto::DOUBLE:
    case onnx::TensorProto::INT64: return 8;
    default: return 0;
  }
}

Tensor tensor_from_proto(const onnx::TensorProto& t, const std::string& where) {
  Shape shape(t.dims().begin(), t.dims().end());
  // The declared shape is checked, and the values counted, before anything is allocated.
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n) || n > (int64_t{1} << 34)) {
      user_error("{}: tensor '{}' declares the shape {}; dimensions must be 0 or more, and at most 2^34 values in all",
                 where, t.name(), shape_str(shape));
    }
  }
  if (t.data_location() == onnx::TensorProto::EXTERNAL) {
    user_error("{}: tensor '{}' uses external data, which qsweep does not load; save the model "
               "with all tensors inside the .onnx file", where, t.name());
  }
  const std::string& raw = t.raw_data();
  auto check_count = [&](int64_t have) {
    if (have != n) {
      user_error("{}: tensor '{}' has {} values for shape {}", where, t.name(), have, shape_str(shape));
    }
  };
  if (const size_t bytes = value_bytes(t.data_type()); bytes != 0 && !raw.empty() && raw.size() % bytes != 0) {
    user_error("{}: tensor '{}' has {} bytes of raw data, not a whole number of {}-byte values", where, t.name(),
               raw.size(), bytes);
  }
  switch (t.data_type()) {
    case onnx::TensorProto::FLOAT: check_count(static_cast<int64_t>(raw.empty() ? t.float_data_size() : raw.size() / 4)); break;
    case onnx::TensorProto::DOUBLE: check_count(static_cast<int64_t>(raw.empty() ? t.double_data_size() : raw.size() / 8)); break;
    case onnx::TensorProto::INT64: check_count(static_cast<int64_t>(raw.empty() ? t.int64_data_size() : raw.size() / 8)); break;
    case onnx::TensorProto::INT32: check_count(static_cast<int64_t>(raw.empty() ? t.int32_data_size() : raw.size() / 4)); break;
    default:
      user_error("{}: tensor '{}' has ONNX data type {}; qsweep reads float32 networks "
                 "(float, double, int32 and int64 constants)", where, t.name(), t.data_type());
  }
  Tensor out(shape);  // as many values as the file holds
  switch (t.data_type()) {
    case onnx::TensorProto::FLOAT:
      if (!raw.empty()) {
        std::memcpy(out.data.data(), raw.data(), raw.size());
      } else {
        std::copy(t.float_data().begin(), t.float_data().end(), out.data.begin());
      }
      break;
    case onnx::TensorProto::DOUBLE:
      if (!raw.empty()) {
        for (int64_t i = 0; i < n; ++i) {
          double d;
          std::memcpy(&d, raw.data() + 8 * i, 8);
          out.data[i] = static_cast<float>(d);
        }
      } else {
        for (int64_t i = 0; i < n; ++i) out.data[i] = static_cast<float>(t.double_data(i));
      }
      break;
    case onnx::TensorProto::INT64:
      if (!raw.empty()) {
        for (int64_t i = 0; i < n; ++i) {
          int64_t v;
          std::memcpy(&v, raw.data() + 8 * i, 8);
          out.data[i] = static_cast<float>(v);
        }
      } else {
        for (int64_t i = 0; i < n; ++i) out.data[i] = static_cast<float>(t.int64_data(i));
      }
      break;
    case onnx::TensorProto::INT32:
      if (!raw.empty()) {
        for (int64_t i = 0; i < n; ++i) {
          int32_t v;
          std::memcpy(&v, raw.data() + 4 * i, 4);
          out.data[i] = static_cast<float>(v);
        }
      } else {
        for (int64_t i = 0; i < n; ++i) out.data[i] = static_cast<float>(t.int32_data(i));
      }
      break;
    default:
      break;  // refused above
  }
  return out;
}

// The exact values of an int64 or int32 tensor (tensor_from_proto has checked its size);
// empty for other types. Constants are kept as float (Tensor), which holds integers exactly
// only up to 2^24: shapes and pads are read from these instead.
std::vector<int64_t> ints_from_proto(const onnx::TensorProto& t) {
  std::vector<int64_t> v;
  const std::string& raw = t.raw_data();
  if (t.data_type() == onnx::TensorProto::INT64) {
    if (raw.empty()) return {t.int64_data().begin(), t.int64_data().end()};
    v.resize(raw.size() / 8);
    std::memcpy(v.data(), raw.data(), v.size() * 8);
  } else if (t.data_type() == onnx::TensorProto::INT32) {
    if (raw.empty()) return {t.int32_data().begin(), t.int32_data().end()};
    std::vector<int32_t> w(raw.size() / 4);
    std::memcpy(w.data(), raw.data(), w.size() * 4);
    v.assign(w.begin(), w.end());
  }
  return v;
}

// A float constant's values as integers, saturated to +-2^62 (no undefined conversion).
std::vector<int64_t> as_ints(const Tensor& t) {
  constexpr double kLimit = 4611686018427387904.0;  // 2^62
  std::vector<int64_t> v(t.data.size());
  for (size_t i = 0; i < v.size(); ++i) {
    const double x = t.data[i];
    v[i] = std::isnan(x) ? 0 : static_cast<int64_t>(std::clamp(x, -kLimit, kLimit));
  }
  return v;
}

class Importer {
 public:
  Importer(std::string origin, const ImportOptions& options) : origin_(std::move(origin)), options_(options) {}

  Graph run(onnx::ModelProto& model) {
    // Our own per-node checks first: their messages name the node and what is accepted,
    // where the ONNX checker's are multi-line and generic.
    precheck(model.graph(), /*ops=*/false);
    // External data: qsweep's sentence, before the checker's, which looks for the data file
    // relative to the working folder and says it is missing.
    for (const auto& init : model.graph().initializer()) {
      if (init.data_location() == onnx::TensorProto::EXTERNAL) (void)tensor_from_proto(init, origin_);
    }
    // IR versions 9 and 10 (ONNX 1.13-1.16's helpers write them) add element types qsweep
    // refuses anyway (float8, int4); the ONNX library here checks up to its own version.
    const int64_t ir = model.ir_version();
    if (ir > onnx::IR_VERSION) {
      if (ir > kMaxIrVersion) {
        user_error("{}: the model has ONNX IR version {}; qsweep reads IR versions up to {} (save it with an "
                   "earlier onnx, or set model.ir_version = {} in Python before saving)",
                   origin_, ir, kMaxIrVersion, kMaxIrVersion);
      }
      model.set_ir_version(onnx::IR_VERSION);
    }
    try {
      onnx::checker::check_model(model);
    } catch (const std::exception& e) {
      user_error("{}: the ONNX checker rejects the model: {}", origin_, one_line(e.what()));
    }
    // Shapes and pad amounts computed from constants (PyTorch's F.pad, x.view(x.size(0), -1))
    // become constants, on a model the checker passed; then every op left must be one qsweep runs.
    fold_shape_computations(model);
    explain_unfolded_shape(model);
    precheck(model.graph(), /*ops=*/true);
    for (const auto& imp : model.opset_import()) {
      if (imp.domain().empty() || imp.domain() == "ai.onnx") g_.opset = static_cast<int>(imp.version());
    }
    if (g_.opset < kMinOpset || g_.opset > kMaxOpset) {
      user_error("{}: the model uses ONNX opset {}; qsweep accepts opsets {} to {} (re-export "
                 "with opset_version in that range)", origin_, g_.opset, kMinOpset, kMaxOpset);
    }
    try {
      onnx::shape_inference::InferShapes(model);
    } catch (const std::exception& e) {
      user_error("{}: ONNX shape inference fails: {}", origin_, one_line(e.what()));
    }
    const onnx::GraphProto& graph = model.graph();
    for (const auto& init : graph.initializer()) {
      const int id = g_.add_constant(init.name(), tensor_from_proto(init, origin_));
      define(init.name(), id);
      if (auto ints = ints_from_proto(init); !ints.empty()) exact_ints_[id] = std::move(ints);
    }
    check_value_sizes(graph);
    read_input(graph);
    for (int i = 0; i < graph.node_size(); ++i) convert_node(graph.node(i), i);
    if (graph.output_size() != 1) {
      user_error("{}: the graph has {} outputs; qsweep needs exactly one (the logits)", origin_,
                 graph.output_size());
    }
    auto it = ids_.find(graph.output(0).name());
    if (it == ids_.end()) {
      user_error("{}: no node produces the graph output '{}'", origin_, graph.output(0).name());
    }
    g_.output = it->second;
    if (g_.output == g_.input) {
      user_error("{}: the graph output '{}' is its input; the model computes nothing", origin_, graph.output(0).name());
    }
    if (g_.values[g_.output].is_constant) {
      user_error("{}: the graph output '{}' is a constant", origin_, graph.output(0).name());
    }
    check_finite_constants();
    if (options_.fold_batch_norm) fold_batch_norms(g_);
    g_.enumerate_layers();
    return std::move(g_);
  }

 private:
  // Weights, biases, BatchNorm statistics and the other constant operands must be finite: a
  // NaN or infinity there makes every number of the run NaN or infinite. (Clip's bounds and
  // Pad's value may be infinite: they are attributes here, not operands.)
  void check_finite_constants() const {
    for (const Node& n : g_.nodes) {
      for (int id : n.inputs) {
        const Value& v = g_.values[id];
        if (!v.is_constant) continue;
        const auto& d = v.constant.data;
        const auto bad = std::find_if(d.begin(), d.end(), [](float x) { return !std::isfinite(x); });
        if (bad == d.end()) continue;
        const auto count = std::count_if(d.begin(), d.end(), [](float x) { return !std::isfinite(x); });
        user_error("{}: constant '{}' of node '{}' ({}) holds {} non-finite value{} ({} at element {}); qsweep needs "
                   "finite weights and constants",
                   origin_, v.name, n.name, n.onnx_op, count, count == 1 ? "" : "s", *bad, bad - d.begin());
      }
    }
  }

  // Multi-line library messages folded into one line.
  static std::string one_line(const std::string& s) {
    std::string out;
    bool space = false;
    for (char c : s) {
      if (c == '\n' || c == '\r' || c == ' ' || c == '\t') {
        space = !out.empty();
        continue;
      }
      if (space) out += ' ';
      space = false;
      out += c;
    }
    return out;
  }

  void define(const std::string& name, int id) { ids_[name] = id; }

  static std::string node_name(const onnx::NodeProto& n, int position) {
    return n.name().empty() ? fmt::format("{}_{}", n.op_type(), position) : n.name();
  }

  // Where the first op qsweep does not run is a Shape of a value whose first dimension is not
  // the batch (the fold takes the batch size only from such values): one sentence that says
  // so, instead of the generic refusal.
  void explain_unfolded_shape(const onnx::ModelProto& model) const {
    const onnx::GraphProto& graph = model.graph();
    const onnx::NodeProto* shape = nullptr;
    int position = 0;
    for (int i = 0; i < graph.node_size() && shape == nullptr; ++i) {
      const auto& n = graph.node(i);
      if (op_table().count(n.op_type()) || import_time_ops().count(n.op_type())) continue;
      if (n.op_type() != "Shape" || n.input_size() < 1) return;
      shape = &n;
      position = i;
    }
    if (shape == nullptr || graph.input_size() < 1) return;
    onnx::ModelProto inferred = model;
    try {
      onnx::shape_inference::InferShapes(inferred);
    } catch (const std::exception&) {
      return;
    }
    auto first_dim = [&](const std::string& name) -> const onnx::TensorShapeProto_Dimension* {
      for (const auto* list : {&inferred.graph().value_info(), &inferred.graph().input()}) {
        for (const auto& vi : *list) {
          if (vi.name() == name && vi.type().tensor_type().has_shape() && vi.type().tensor_type().shape().dim_size() > 0) {
            return &vi.type().tensor_type().shape().dim(0);
          }
        }
      }
      return nullptr;
    };
    const auto* batch = first_dim(graph.input(0).name());
    if (batch == nullptr || batch->dim_param().empty()) return;
    // The first dimension of `value`, said as a number or symbol; empty where it is the batch.
    auto other_first = [&](const std::string& value) -> std::optional<std::string> {
      const auto* first = first_dim(value);
      if (first == nullptr || first->dim_param() == batch->dim_param()) return std::nullopt;
      return first->has_dim_value() ? std::to_string(first->dim_value())
             : first->dim_param().empty() ? std::string("unknown")
                                          : "'" + first->dim_param() + "'";
    };
    const std::string why = fmt::format(
        "qsweep folds the sizes a model computes only from and into values that start with the batch ('{}'), as "
        "x.view(x.size(0), -1) has them, so this model cannot be analysed as it is (take the size from a value "
        "with the batch first, or write -1 for it)",
        batch->dim_param());
    if (const auto what = other_first(shape->input(0))) {
      user_error("{}: node '{}' (Shape) reads '{}', whose first dimension ({}) is not the batch; {}", origin_,
                 node_name(*shape, position), shape->input(0), *what, why);
    }
    // The size goes into a Reshape of a value that does not start with the batch.
    std::set<std::string> initializers;
    for (const auto& t : graph.initializer()) initializers.insert(t.name());
    for (int i = 0; i < graph.node_size(); ++i) {
      const auto& n = graph.node(i);
      if (n.op_type() != "Reshape" || n.input_size() < 2 || initializers.count(n.input(1))) continue;
      if (const auto what = other_first(n.input(0))) {
        user_error("{}: node '{}' (Reshape) reshapes '{}', whose first dimension ({}) is not the batch, to a size "
                   "computed from the batch; {}",
                   origin_, node_name(n, i), n.input(0), *what, why);
      }
    }
  }

  // ops = false: the checks shape inference needs first (domains, node order, window
  // attributes that it would divide by); ops = true: every op one qsweep runs.
  void precheck(const onnx::GraphProto& graph, bool ops) {
    std::set<std::string> known;
    for (const auto& i : graph.input()) known.insert(i.name());
    for (const auto& i : graph.initializer()) known.insert(i.name());
    for (int i = 0; i < graph.node_size(); ++i) {
      const auto& n = graph.node(i);
      const std::string name = node_name(n, i);
      const bool standard = n.domain().empty() || n.domain() == "ai.onnx";
      if (!standard || (ops && !op_table().count(n.op_type()) && !import_time_ops().count(n.op_type()))) {
        // Ops that compute shapes or pad amounts at run time: PyTorch writes them for
        // x.view(x.size(0), -1) and for F.pad / nn.ZeroPad2d.
        static const std::set<std::string> shape_ops = {"Shape", "ConstantOfShape", "Gather", "Unsqueeze", "Squeeze",
                                                        "Slice", "Cast", "Range", "Expand"};
        const bool shape_op = standard && shape_ops.count(n.op_type());
        user_error("{}: node '{}' has op '{}'{}, which qsweep does not support; supported ops: {}{}", origin_, name,
                   n.op_type(), standard ? "" : fmt::format(" from domain '{}'", n.domain()), supported_onnx_ops(),
                   !shape_op ? ""
                   : n.op_type() == "Shape"
                       ? " (qsweep folds x.view(x.size(0), -1) and other shapes computed from the batch size and "
                         "fixed dimensions; this one is used otherwise: write torch.flatten(x, 1) where a flatten "
                         "is meant)"
                       : " (qsweep folds such nodes where they compute a shape or pad amounts from constants, as "
                         "PyTorch exports F.pad and nn.ZeroPad2d; this one depends on other values)");
      }
      for (const auto& in : n.input()) {
        if (!in.empty() && !known.count(in)) {
          user_error("{}: node '{}' ({}) reads '{}' before any node produces it; ONNX requires nodes in "
                     "topological order", origin_, name, n.op_type(), in);
        }
      }
      for (const auto& out : n.output()) known.insert(out);
      if (!ops && (n.op_type() == "Conv" || n.op_type() == "MaxPool" || n.op_type() == "AveragePool")) {
        check_window(n, name);
      }
    }
  }

  // Every value that shape inference sized must fit: a pad of thousands on one Conv would
  // otherwise have the first forward compute (and allocate) for minutes before any error.
  void check_value_sizes(const onnx::GraphProto& graph) const {
    constexpr int64_t kMostPerImage = int64_t{1} << 28;  // 1 GiB of float32 per image
    std::unordered_map<std::string, const onnx::NodeProto*> producer;
    for (const auto& n : graph.node()) {
      for (const auto& o : n.output()) producer[o] = &n;
    }
    std::vector<const onnx::ValueInfoProto*> sized;
    for (const auto& vi : graph.value_info()) sized.push_back(&vi);
    for (const auto& vi : graph.output()) sized.push_back(&vi);
    for (const onnx::ValueInfoProto* v : sized) {
      const onnx::ValueInfoProto& vi = *v;
      const auto& dims = vi.type().tensor_type().shape().dim();
      int64_t per_image = 1;
      bool big = false;
      for (int d = 1; d < dims.size(); ++d) {  // dimension 0 is the batch
        if (!dims[d].has_dim_value() || dims[d].dim_value() < 0) continue;
        big = big || __builtin_mul_overflow(per_image, dims[d].dim_value(), &per_image) || per_image > kMostPerImage;
      }
      if (big) {
        const auto it = producer.find(vi.name());
        user_error("{}: the value '{}'{} would hold more than 2^28 values per image; check the model's pads and "
                   "sizes", origin_, vi.name(),
                   it == producer.end() ? std::string()
                                        : fmt::format(" (output of node '{}', {})", it->second->name(), it->second->op_type()));
      }
    }
  }

  // Window attributes in range, before ONNX's shape inference divides by them.
  void check_window(const onnx::NodeProto& n, const std::string& name) const {
    constexpr int64_t kMost = 65536;
    const struct {
      const char* attr;
      int64_t least;
    } rules[] = {{"strides", 1}, {"dilations", 1}, {"kernel_shape", 1}, {"pads", 0}};
    for (const auto& r : rules) {
      for (int64_t v : attr_ints(n, r.attr)) {
        if (v < r.least || v > kMost) {
          user_error("{}: node '{}' ({}) has {} [{}]; each must be {} to {}", origin_, name, n.op_type(), r.attr,
                     fmt::join(attr_ints(n, r.attr), ", "), r.least, kMost);
        }
      }
    }
  }

  void read_input(const onnx::GraphProto& graph) {
    std::set<std::string> inits;
    for (const auto& i : graph.initializer()) inits.insert(i.name());
    std::vector<const onnx::ValueInfoProto*> inputs;
    for (const auto& in : graph.input()) {
      if (!inits.count(in.name())) inputs.push_back(&in);
    }
    if (inputs.size() != 1) {
      user_error("{}: the graph has {} non-constant inputs; qsweep needs exactly one (the image "
                 "batch)", origin_, inputs.size());
    }
    const auto& in = *inputs[0];
    const auto& type = in.type();
    if (!type.has_tensor_type() || type.tensor_type().elem_type() != onnx::TensorProto::FLOAT) {
      user_error("{}: the graph input '{}' is not a float32 tensor", origin_, in.name());
    }
    const auto& dims = type.tensor_type().shape().dim();
    if (dims.size() < 2) {
      user_error("{}: the graph input '{}' has rank {}; qsweep needs (N, C, H, W) or (N, F)",
                 origin_, in.name(), dims.size());
    }
    for (int d = 1; d < dims.size(); ++d) {
      if (!dims[d].has_dim_value()) {
        user_error("{}: dimension {} of the graph input '{}' is not fixed; only the batch "
                   "dimension may be symbolic", origin_, d, in.name());
      }
      g_.input_shape.push_back(dims[d].dim_value());
    }
    g_.input = g_.add_value(in.name());
    define(in.name(), g_.input);
  }

  int lookup(const onnx::NodeProto& n, const std::string& name, const std::string& node_name) {
    auto it = ids_.find(name);
    if (it == ids_.end()) {
      user_error("{}: node '{}' ({}) reads '{}' before any node produces it; ONNX requires "
                 "nodes in topological order", origin_, node_name, n.op_type(), name);
    }
    return it->second;
  }

  const Tensor& require_constant(const onnx::NodeProto& n, const std::string& node_name, int idx,
                                 const char* what) {
    if (idx >= n.input_size() || n.input(idx).empty()) {
      user_error("{}: node '{}' ({}) has no {} input", origin_, node_name, n.op_type(), what);
    }
    int v = lookup(n, n.input(idx), node_name);
    if (!g_.values[v].is_constant) {
      user_error("{}: node '{}' ({}): its {} ('{}') must be a constant (an initializer or a "
                 "Constant node)", origin_, node_name, n.op_type(), what, n.input(idx));
    }
    return g_.values[v].constant;
  }

  // An integer constant input (a shape, pads): exact when the file stores integers.
  std::vector<int64_t> require_ints(const onnx::NodeProto& n, const std::string& node_name, int idx, const char* what) {
    const Tensor& t = require_constant(n, node_name, idx, what);
    const auto it = exact_ints_.find(lookup(n, n.input(idx), node_name));
    return it != exact_ints_.end() ? it->second : as_ints(t);
  }

  void require_nonempty(const Tensor& w, const std::string& node_name, const char* op, const char* what) const {
    for (int64_t d : w.shape) {
      if (d < 1) {
        user_error("{}: node '{}' ({}) has a {} of shape {}; every dimension must be at least 1", origin_, node_name,
                   op, what, shape_str(w.shape));
      }
    }
  }

  // A constant input that must hold one value (ONNX: a scalar).
  float scalar(const onnx::NodeProto& n, const std::string& node_name, int idx, const char* what) {
    const Tensor& t = require_constant(n, node_name, idx, what);
    if (t.numel() != 1) {
      user_error("{}: node '{}' ({}) has a {} of shape {}; it must hold one value", origin_, node_name, n.op_type(),
                 what, shape_str(t.shape));
    }
    return t.data[0];
  }

  [[noreturn]] void batch_axis_error(const onnx::NodeProto& n, const std::string& node_name, const char* verb) const {
    user_error("{}: node '{}' ({}) {} axis 0, the batch: each image's result would depend on the others in its "
               "batch; qsweep evaluates images independently", origin_, node_name, n.op_type(), verb);
  }

  static const onnx::AttributeProto* attr(const onnx::NodeProto& n, const char* name) {
    for (const auto& a : n.attribute()) {
      if (a.name() == name) return &a;
    }
    return nullptr;
  }
  static int64_t attr_i(const onnx::NodeProto& n, const char* name, int64_t def) {
    const auto* a = attr(n, name);
    return a ? a->i() : def;
  }
  static float attr_f(const onnx::NodeProto& n, const char* name, float def) {
    const auto* a = attr(n, name);
    return a ? a->f() : def;
  }
  static std::vector<int64_t> attr_ints(const onnx::NodeProto& n, const char* name) {
    const auto* a = attr(n, name);
    return a ? std::vector<int64_t>(a->ints().begin(), a->ints().end()) : std::vector<int64_t>{};
  }
  static std::string attr_s(const onnx::NodeProto& n, const char* name, const std::string& def) {
    const auto* a = attr(n, name);
    return a ? a->s() : def;
  }

  void spatial_attrs(const onnx::NodeProto& n, const std::string& name, size_t spatial, NodeAttrs& a,
                     bool allow_dilation) {
    a.strides = attr_ints(n, "strides");
    if (a.strides.empty()) a.strides.assign(spatial, 1);
    a.dilations = attr_ints(n, "dilations");
    if (a.dilations.empty()) a.dilations.assign(spatial, 1);
    a.pads = attr_ints(n, "pads");
    if (a.pads.empty()) a.pads.assign(2 * spatial, 0);
    if (a.strides.size() != spatial || a.dilations.size() != spatial || a.pads.size() != 2 * spatial) {
      user_error("{}: node '{}' ({}) has strides/dilations/pads of the wrong length for {} spatial "
                 "dimensions", origin_, name, n.op_type(), spatial);
    }
    if (!allow_dilation) {
      for (int64_t d : a.dilations) {
        if (d != 1) {
          user_error("{}: node '{}' ({}) uses dilations; qsweep supports dilated pooling only with "
                     "dilation 1", origin_, name, n.op_type());
        }
      }
    }
    const std::string ap = attr_s(n, "auto_pad", "NOTSET");
    if (ap == "NOTSET") a.auto_pad = AutoPad::kNotSet;
    else if (ap == "SAME_UPPER") a.auto_pad = AutoPad::kSameUpper;
    else if (ap == "SAME_LOWER") a.auto_pad = AutoPad::kSameLower;
    else if (ap == "VALID") a.auto_pad = AutoPad::kValid;
    else user_error("{}: node '{}' ({}) has auto_pad '{}'; accepted: NOTSET, SAME_UPPER, SAME_LOWER, VALID",
                    origin_, name, n.op_type(), ap);
  }

  void convert_node(const onnx::NodeProto& n, int position) {
    std::string name = node_name(n, position);
    if (!used_names_.insert(name).second) {
      name = fmt::format("{}_{}", name, position);
      used_names_.insert(name);
    }
    if (!n.domain().empty() && n.domain() != "ai.onnx") {
      user_error("{}: node '{}' uses op '{}' from domain '{}'; qsweep supports the standard ONNX "
                 "domain only: {}", origin_, name, n.op_type(), n.domain(), supported_onnx_ops());
    }
    const std::string& op = n.op_type();
    if (op == "Constant") return convert_constant(n, name);
    if (op == "Identity" || op == "Dropout") {
      if (op == "Dropout" && n.output_size() > 1 && !n.output(1).empty()) {
        user_error("{}: node '{}' (Dropout) exposes its mask output; export the model in eval mode",
                   origin_, name);
      }
      define(n.output(0), lookup(n, n.input(0), name));
      return;
    }
    auto it = op_table().find(op);
    if (it == op_table().end()) {
      user_error("{}: node '{}' has op '{}', which qsweep does not support; supported ops: {}",
                 origin_, name, op, supported_onnx_ops());
    }
    Node node;
    node.name = name;
    node.onnx_op = op;
    node.op = it->second;
    NodeAttrs& a = node.attrs;
    // The first input is always an activation (or, for Add/Mul/Concat, any value).
    auto add_input = [&](int idx) { node.inputs.push_back(lookup(n, n.input(idx), name)); };
    auto has_input = [&](int idx) { return idx < n.input_size() && !n.input(idx).empty(); };
    if (n.input_size() == 0) user_error("{}: node '{}' ({}) has no inputs", origin_, name, op);
    for (int o = 1; o < n.output_size(); ++o) {
      if (!n.output(o).empty() && node.op != OpType::kBatchNorm && node.op != OpType::kMaxPool) {
        user_error("{}: node '{}' ({}) has {} outputs; qsweep supports one", origin_, name, op, n.output_size());
      }
    }
    switch (node.op) {
      case OpType::kConv: {
        add_input(0);
        const Tensor& w = require_constant(n, name, 1, "weight");
        if (w.rank() != 4) {
          user_error("{}: node '{}' (Conv) has a {}-D weight; qsweep supports 2-D convolutions "
                     "(4-D weights)", origin_, name, w.rank());
        }
        require_nonempty(w, name, "Conv", "weight");
        node.inputs.push_back(lookup(n, n.input(1), name));
        if (has_input(2)) {
          const Tensor& b = require_constant(n, name, 2, "bias");
          if (b.rank() != 1 || b.numel() != w.shape[0]) {
            user_error("{}: node '{}' (Conv) has a bias of shape {}; its weight has {} output channels, so the bias "
                       "must be ({})", origin_, name, shape_str(b.shape), w.shape[0], w.shape[0]);
          }
          add_input(2);
        }
        a.kernel = {w.shape[2], w.shape[3]};
        a.group = attr_i(n, "group", 1);
        if (a.group < 1 || w.shape[0] % a.group != 0) {
          user_error("{}: node '{}' (Conv) has group {} for {} output channels; group must be at least 1 and divide "
                     "them", origin_, name, a.group, w.shape[0]);
        }
        spatial_attrs(n, name, 2, a, true);
        break;
      }
      case OpType::kGemm: {
        add_input(0);
        if (attr_i(n, "transA", 0) != 0) {
          user_error("{}: node '{}' (Gemm) has transA=1; qsweep supports Gemm with the activation "
                     "as untransposed A", origin_, name);
        }
        const Tensor& w = require_constant(n, name, 1, "weight (B)");
        if (w.rank() != 2) user_error("{}: node '{}' (Gemm) has a weight of rank {}", origin_, name, w.rank());
        require_nonempty(w, name, "Gemm", "weight");
        node.inputs.push_back(lookup(n, n.input(1), name));
        a.trans_b = attr_i(n, "transB", 0) != 0;
        if (has_input(2)) {
          // C is added to every row: a scalar, (1), (out) or (1, out); a C that depends on the
          // row would depend on which images share a batch.
          const Tensor& c = require_constant(n, name, 2, "bias (C)");
          const int64_t out = w.shape[a.trans_b ? 0 : 1];
          const bool per_row = c.numel() == 1 || (c.numel() == out && (c.rank() == 1 || (c.rank() == 2 && c.shape[0] == 1)));
          if (!per_row || c.rank() > 2) {
            user_error("{}: node '{}' (Gemm) has a bias C of shape {}; accepted: a scalar, ({}) or (1, {})", origin_,
                       name, shape_str(c.shape), out, out);
          }
          if (c.numel() == out) {
            add_input(2);
          } else {  // one value for every output: a bias of its own, as per-channel code reads (out) values
            const std::string full = n.input(2) + "/" + name + "/broadcast";
            node.inputs.push_back(g_.add_constant(full, Tensor(Shape{out}, std::vector<float>(out, c.data[0]))));
          }
        }
        a.alpha = attr_f(n, "alpha", 1.0f);
        a.beta = attr_f(n, "beta", 1.0f);
        break;
      }
      case OpType::kMatMul: {
        add_input(0);
        if (!has_input(1)) user_error("{}: node '{}' (MatMul) has one input", origin_, name);
        const int b = lookup(n, n.input(1), name);
        if (!g_.values[b].is_constant || g_.values[b].constant.rank() != 2) {
          user_error("{}: node '{}' (MatMul) multiplies two activations or uses a weight that is not "
                     "a 2-D constant; qsweep supports MatMul with a constant 2-D weight", origin_, name);
        }
        require_nonempty(g_.values[b].constant, name, "MatMul", "weight");
        node.inputs.push_back(b);
        break;
      }
      case OpType::kBatchNorm: {
        add_input(0);
        if (attr_i(n, "training_mode", 0) != 0 || (n.output_size() > 1 && !n.output(1).empty())) {
          user_error("{}: node '{}' (BatchNormalization) is in training mode; export the model in "
                     "eval mode", origin_, name);
        }
        const Tensor& gamma = require_constant(n, name, 1, "scale");
        const Tensor& beta = require_constant(n, name, 2, "bias");
        const Tensor& mean = require_constant(n, name, 3, "mean");
        const Tensor& var = require_constant(n, name, 4, "var");
        for (int i = 1; i <= 4; ++i) node.inputs.push_back(lookup(n, n.input(i), name));
        a.epsilon = attr_f(n, "epsilon", 1e-5f);
        const int64_t c = gamma.numel();
        if (beta.numel() != c || mean.numel() != c || var.numel() != c) {
          user_error("{}: node '{}' (BatchNormalization) has parameters of different lengths", origin_, name);
        }
        a.bn_scale.resize(c);
        a.bn_shift.resize(c);
        for (int64_t i = 0; i < c; ++i) {
          if (!(static_cast<double>(var.data[i]) + a.epsilon > 0.0)) {
            user_error("{}: node '{}' (BatchNormalization) has running variance {} in channel {}; var + epsilon must "
                       "be positive", origin_, name, var.data[i], i);
          }
          const double s = gamma.data[i] / std::sqrt(static_cast<double>(var.data[i]) + a.epsilon);
          a.bn_scale[i] = static_cast<float>(s);
          a.bn_shift[i] = static_cast<float>(beta.data[i] - mean.data[i] * s);
        }
        break;
      }
      case OpType::kRelu:
      case OpType::kSigmoid:
      case OpType::kHardSwish:
      case OpType::kGlobalAveragePool:
        add_input(0);
        break;
      case OpType::kLeakyRelu:
        add_input(0);
        a.act_alpha = attr_f(n, "alpha", 0.01f);
        break;
      case OpType::kHardSigmoid:
        add_input(0);
        a.act_alpha = attr_f(n, "alpha", 0.2f);
        a.act_beta = attr_f(n, "beta", 0.5f);
        break;
      case OpType::kClip: {
        add_input(0);
        a.act_alpha = -std::numeric_limits<float>::infinity();
        a.act_beta = std::numeric_limits<float>::infinity();
        if (g_.opset < 11) {
          a.act_alpha = attr_f(n, "min", a.act_alpha);
          a.act_beta = attr_f(n, "max", a.act_beta);
        } else {
          if (has_input(1)) a.act_alpha = scalar(n, name, 1, "min");
          if (has_input(2)) a.act_beta = scalar(n, name, 2, "max");
        }
        if (std::isnan(a.act_alpha) || std::isnan(a.act_beta)) {
          user_error("{}: node '{}' (Clip) has min {} and max {}; they must be numbers", origin_, name, a.act_alpha,
                     a.act_beta);
        }
        // ONNX: min(max(x, min), max), which is max everywhere when min > max.
        a.act_alpha = std::min(a.act_alpha, a.act_beta);
        break;
      }
      case OpType::kAdd:
      case OpType::kMul:
        if (n.input_size() != 2) user_error("{}: node '{}' ({}) needs two inputs", origin_, name, op);
        add_input(0);
        add_input(1);
        if (g_.values[node.inputs[0]].is_constant && g_.values[node.inputs[1]].is_constant) {
          user_error("{}: node '{}' ({}) combines two constants; fold it before export", origin_, name, op);
        }
        break;
      case OpType::kConcat:
        for (int i = 0; i < n.input_size(); ++i) add_input(i);
        a.axis = attr_i(n, "axis", 1);
        if (a.axis == 0) batch_axis_error(n, name, "concatenates along");
        break;
      case OpType::kMaxPool:
      case OpType::kAveragePool: {
        add_input(0);
        if (n.output_size() > 1 && !n.output(1).empty()) {
          user_error("{}: node '{}' (MaxPool) exposes its Indices output, which qsweep does not support",
                     origin_, name);
        }
        a.kernel = attr_ints(n, "kernel_shape");
        if (a.kernel.size() != 2) {
          user_error("{}: node '{}' ({}) has a {}-D kernel; qsweep supports 2-D pooling", origin_, name,
                     op, a.kernel.size());
        }
        spatial_attrs(n, name, 2, a, false);
        a.ceil_mode = attr_i(n, "ceil_mode", 0) != 0;
        a.count_include_pad = attr_i(n, "count_include_pad", 0) != 0;
        break;
      }
      case OpType::kFlatten:
        add_input(0);
        a.axis = attr_i(n, "axis", 1);
        break;
      case OpType::kReshape:
        add_input(0);
        a.shape = require_ints(n, name, 1, "shape");
        a.allow_zero = attr_i(n, "allowzero", 0) != 0;
        // The first dimension must follow the batch: 0 (copied) or -1 (inferred). A fixed one,
        // as torch.onnx.export writes x.view(x.size(0), -1) for a model exported with a fixed
        // batch of 1, would fold a batch of many images into one row (found at run time, the
        // next layer then blamed for twice its features).
        if (!a.shape.empty() && a.shape[0] > 0 && !g_.values[node.inputs[0]].is_constant) {  // a constant has no batch
          user_error("{}: node '{}' (Reshape) has the shape [{}], whose first dimension fixes the batch size at {}; "
                     "qsweep evaluates batches of many images: write torch.flatten(x, 1) (or x.view(-1, features)) "
                     "in the model, so that the export reads 0 or -1",
                     origin_, name, fmt::join(a.shape, ","), a.shape[0]);
        }
        break;
      case OpType::kSoftmax:
        add_input(0);
        a.axis = attr_i(n, "axis", g_.opset >= 13 ? -1 : 1);
        if (a.axis == 0) batch_axis_error(n, name, "normalizes over");
        a.softmax_legacy = g_.opset < 13;
        break;
      case OpType::kPad: {
        add_input(0);
        const std::string mode = attr_s(n, "mode", "constant");
        if (mode == "constant") a.pad_mode = static_cast<int>(PadMode::kConstant);
        else if (mode == "reflect") a.pad_mode = static_cast<int>(PadMode::kReflect);
        else if (mode == "edge") a.pad_mode = static_cast<int>(PadMode::kEdge);
        else user_error("{}: node '{}' (Pad) has mode '{}'; accepted: constant, reflect, edge", origin_, name, mode);
        a.pad_amounts = require_ints(n, name, 1, "pads");
        for (size_t i = 0; i < a.pad_amounts.size(); ++i) {
          const int64_t v = a.pad_amounts[i];
          if (v < 0 || v > 65536) {
            user_error("{}: node '{}' (Pad) pads by {}; each amount must be 0 to 65536 (a negative pad crops, which "
                       "qsweep's Pad does not: crop in the data, or with a strided or smaller convolution)",
                       origin_, name, v);
          }
          // pads = [x1_begin, x2_begin, ..., x1_end, ...]: axis 0 is the batch.
          if (v != 0 && (i == 0 || i == a.pad_amounts.size() / 2)) batch_axis_error(n, name, "pads along");
        }
        if (has_input(2)) a.pad_value = scalar(n, name, 2, "constant_value");
        if (has_input(3)) user_error("{}: node '{}' (Pad) uses the axes input, which qsweep does not support", origin_, name);
        break;
      }
    }
    node.output = g_.add_value(n.output(0));
    define(n.output(0), node.output);
    g_.nodes.push_back(std::move(node));
  }

  void convert_constant(const onnx::NodeProto& n, const std::string& name) {
    Tensor t;
    std::vector<int64_t> ints;
    if (const auto* v = attr(n, "value")) {
      t = tensor_from_proto(v->t(), origin_);
      ints = ints_from_proto(v->t());
    } else if (const auto* f = attr(n, "value_float")) {
      t = Tensor(Shape{}, {f->f()});
    } else if (const auto* fs = attr(n, "value_floats")) {
      t = Tensor(Shape{fs->floats_size()}, std::vector<float>(fs->floats().begin(), fs->floats().end()));
    } else if (const auto* i = attr(n, "value_int")) {
      t = Tensor(Shape{}, {static_cast<float>(i->i())});
      ints = {i->i()};
    } else if (const auto* is = attr(n, "value_ints")) {
      std::vector<float> d;
      for (auto x : is->ints()) d.push_back(static_cast<float>(x));
      t = Tensor(Shape{is->ints_size()}, d);
      ints.assign(is->ints().begin(), is->ints().end());
    } else {
      user_error("{}: Constant node '{}' has no value qsweep can read (value, value_float(s), "
                 "value_int(s))", origin_, name);
    }
    const int id = g_.add_constant(n.output(0), std::move(t));
    define(n.output(0), id);
    if (!ints.empty()) exact_ints_[id] = std::move(ints);
  }

  std::string origin_;
  ImportOptions options_;
  Graph g_;
  std::unordered_map<std::string, int> ids_;
  std::unordered_map<int, std::vector<int64_t>> exact_ints_;  // value id -> an integer constant's exact values
  std::set<std::string> used_names_;
};

}  // namespace

std::string supported_onnx_ops() {
  std::string s;
  std::set<std::string> names;
  for (const auto& [k, v] : op_table()) names.insert(k);
  for (const auto& k : import_time_ops()) names.insert(k);
  for (const auto& k : names) s += (s.empty() ? "" : ", ") + k;
  return s;
}

Graph import_onnx_bytes(const std::string& bytes, const std::string& origin, const ImportOptions& options) {
  onnx::ModelProto model;
  if (!model.ParseFromString(bytes)) {
    user_error("{}: not a valid ONNX model (protobuf parsing failed)", origin);
  }
  return Importer(origin, options).run(model);
}

Graph import_onnx(const std::string& path, const ImportOptions& options) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    user_error("model file '{}' does not exist or is not a file", path);
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) user_error("model file '{}' cannot be read", path);
  std::stringstream ss;
  ss << in.rdbuf();
  return import_onnx_bytes(ss.str(), path, options);
}

}  // namespace qsweep
