#include "runtime/onnx_fold.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <onnx/shape_inference/implementation.h>

namespace qsweep {
namespace {

// Folded values stay small: shapes, pads, a reshaped weight at most.
constexpr int64_t kMaxValues = int64_t{1} << 24;

struct Val {
  std::vector<int64_t> dims;
  bool is_float = false;
  std::vector<int64_t> i;  // integer element types
  std::vector<double> f;   // float element types
  // Per entry of i, or empty for none: the batch size, unknown until run time (a Shape of an
  // image value, then moved around by Gather, Unsqueeze, Concat, ...).
  std::vector<char> batch;
  size_t size() const { return is_float ? f.size() : i.size(); }
  bool has_batch() const { return std::find(batch.begin(), batch.end(), 1) != batch.end(); }
};

std::optional<int64_t> count_of(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) {
    if (d < 0 || __builtin_mul_overflow(n, d, &n) || n > kMaxValues) return std::nullopt;
  }
  return n;
}

template <typename T>
std::vector<T> raw_values(const std::string& raw) {
  std::vector<T> v(raw.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), raw.data(), v.size() * sizeof(T));
  return v;
}

std::optional<Val> from_tensor(const onnx::TensorProto& t) {
  if (t.data_location() == onnx::TensorProto::EXTERNAL) return std::nullopt;
  Val v;
  v.dims.assign(t.dims().begin(), t.dims().end());
  const auto n = count_of(v.dims);
  if (!n) return std::nullopt;
  const std::string& raw = t.raw_data();
  switch (t.data_type()) {
    case onnx::TensorProto::FLOAT: {
      v.is_float = true;
      const auto x = raw.empty() ? std::vector<float>(t.float_data().begin(), t.float_data().end()) : raw_values<float>(raw);
      v.f.assign(x.begin(), x.end());
      break;
    }
    case onnx::TensorProto::DOUBLE: {
      v.is_float = true;
      v.f = raw.empty() ? std::vector<double>(t.double_data().begin(), t.double_data().end()) : raw_values<double>(raw);
      break;
    }
    case onnx::TensorProto::INT64:
      v.i = raw.empty() ? std::vector<int64_t>(t.int64_data().begin(), t.int64_data().end()) : raw_values<int64_t>(raw);
      break;
    case onnx::TensorProto::INT32: {
      const auto x = raw.empty() ? std::vector<int32_t>(t.int32_data().begin(), t.int32_data().end())
                                 : raw_values<int32_t>(raw);
      v.i.assign(x.begin(), x.end());
      break;
    }
    default: return std::nullopt;
  }
  if (static_cast<int64_t>(v.size()) != *n) return std::nullopt;
  return v;
}

// The elements of v at `at`, shaped `dims`.
Val take(const Val& v, std::vector<int64_t> dims, const std::vector<int64_t>& at) {
  Val out;
  out.dims = std::move(dims);
  out.is_float = v.is_float;
  for (int64_t k : at) {
    if (v.is_float) out.f.push_back(v.f[k]);
    else out.i.push_back(v.i[k]);
    if (!v.batch.empty()) out.batch.push_back(v.batch[k]);
  }
  return out;
}

std::vector<int64_t> strides_of(const std::vector<int64_t>& dims) {
  std::vector<int64_t> s(dims.size(), 1);
  for (int k = static_cast<int>(dims.size()) - 2; k >= 0; --k) s[k] = s[k + 1] * dims[k + 1];
  return s;
}

// Calls f(index of each output element in v) for an output of `dims` whose element at
// multi-index m comes from v at source(m).
template <typename Source>
std::optional<Val> gather_elements(const Val& v, const std::vector<int64_t>& dims, Source source) {
  const auto n = count_of(dims);
  if (!n) return std::nullopt;
  std::vector<int64_t> at(*n), m(dims.size(), 0);
  for (int64_t e = 0; e < *n; ++e) {
    at[e] = source(m);
    for (int k = static_cast<int>(dims.size()) - 1; k >= 0; --k) {
      if (++m[k] < dims[k]) break;
      m[k] = 0;
    }
  }
  return take(v, dims, at);
}

std::optional<int64_t> axis_in(int64_t axis, size_t rank) {
  const int64_t r = static_cast<int64_t>(rank);
  if (axis < -r || axis >= r) return std::nullopt;
  return axis < 0 ? axis + r : axis;
}

const onnx::AttributeProto* attr(const onnx::NodeProto& n, const char* name) {
  for (const auto& a : n.attribute()) {
    if (a.name() == name) return &a;
  }
  return nullptr;
}

int64_t attr_int(const onnx::NodeProto& n, const char* name, int64_t def) {
  const auto* a = attr(n, name);
  return a ? a->i() : def;
}

// Integer values without the batch size (indices, axes, shapes to build).
bool plain_ints(const Val& v) {
  return !v.is_float && !v.has_batch();
}

class Folder {
 public:
  Folder(const onnx::ModelProto& model, int opset) : opset_(opset) {
    for (const auto& vi : model.graph().value_info()) shapes_[vi.name()] = &vi;
    for (const auto& vi : model.graph().output()) shapes_[vi.name()] = &vi;
    std::set<std::string> initializers;
    for (const auto& t : model.graph().initializer()) initializers.insert(t.name());
    for (const auto& vi : model.graph().input()) {
      shapes_[vi.name()] = &vi;
      // The batch: the symbolic first dimension of the (one) image input.
      if (!initializers.count(vi.name()) && batch_symbol_.empty()) {
        const auto& t = vi.type().tensor_type();
        if (t.has_shape() && t.shape().dim_size() > 0) batch_symbol_ = t.shape().dim(0).dim_param();
      }
    }
  }

  // Whether shape inference gives `value` the image input's symbolic batch as its first
  // dimension (not another symbol: reshape(-1, k) makes one of its own).
  bool batch_first(const std::string& value) const {
    const auto it = shapes_.find(value);
    if (batch_symbol_.empty() || it == shapes_.end() || !it->second->type().tensor_type().has_shape()) return false;
    const auto& shape = it->second->type().tensor_type().shape();
    return shape.dim_size() > 0 && shape.dim(0).dim_param() == batch_symbol_;
  }

  // The outputs of node n from its inputs' values (null: an optional input left out), or
  // nothing where it cannot be folded.
  std::optional<std::vector<Val>> eval(const onnx::NodeProto& n, const std::vector<const Val*>& in) const {
    const std::string& op = n.op_type();
    auto one = [](std::optional<Val> v) -> std::optional<std::vector<Val>> {
      if (!v) return std::nullopt;
      return std::vector<Val>{std::move(*v)};
    };
    auto input = [&](size_t k) -> const Val* { return k < in.size() ? in[k] : nullptr; };
    if (op == "Constant") return one(constant(n));
    if (op == "Identity") return input(0) ? one(*input(0)) : std::nullopt;
    if (op == "Shape") return one(input(0) ? shape_from(n, input(0)->dims, {}) : shape_of(n));
    if (!input(0)) return std::nullopt;
    const Val& x = *input(0);
    if (op == "ConstantOfShape") return one(constant_of_shape(n, x));
    if (op == "Gather") return input(1) ? one(gather(x, *input(1), attr_int(n, "axis", 0))) : std::nullopt;
    if (op == "Unsqueeze" || op == "Squeeze") {
      std::optional<std::vector<int64_t>> axes;
      if (opset_ < 13) {
        if (const auto* a = attr(n, "axes")) axes = std::vector<int64_t>(a->ints().begin(), a->ints().end());
      } else if (input(1)) {
        if (!plain_ints(*input(1))) return std::nullopt;
        axes = input(1)->i;
      }
      return one(op == "Unsqueeze" ? unsqueeze(x, axes) : squeeze(x, axes));
    }
    if (op == "Concat") {
      for (const Val* v : in) {
        if (!v) return std::nullopt;
      }
      return one(concat(in, attr_int(n, "axis", 0)));
    }
    if (op == "Reshape") return input(1) ? one(reshape(x, *input(1), attr_int(n, "allowzero", 0) != 0)) : std::nullopt;
    if (op == "Slice") return one(slice(x, input(1), input(2), input(3), input(4)));
    if (op == "Transpose") {
      std::vector<int64_t> perm(x.dims.size());
      std::iota(perm.rbegin(), perm.rend(), 0);
      if (const auto* a = attr(n, "perm")) perm.assign(a->ints().begin(), a->ints().end());
      return one(transpose(x, perm));
    }
    if (op == "Cast") return one(cast(x, attr_int(n, "to", 0)));
    if (op == "Add" || op == "Sub" || op == "Mul") return input(1) ? one(arithmetic(op, x, *input(1))) : std::nullopt;
    return std::nullopt;
  }

 private:
  std::optional<Val> constant(const onnx::NodeProto& n) const {
    if (const auto* a = attr(n, "value")) return from_tensor(a->t());
    Val v;
    if (const auto* a = attr(n, "value_int")) {
      v.i = {a->i()};
    } else if (const auto* a = attr(n, "value_ints")) {
      v.i.assign(a->ints().begin(), a->ints().end());
      v.dims = {static_cast<int64_t>(v.i.size())};
    } else if (const auto* a = attr(n, "value_float")) {
      v.is_float = true;
      v.f = {a->f()};
    } else if (const auto* a = attr(n, "value_floats")) {
      v.is_float = true;
      v.f.assign(a->floats().begin(), a->floats().end());
      v.dims = {static_cast<int64_t>(v.f.size())};
    } else {
      return std::nullopt;
    }
    return v;
  }

  // Shape of a graph value whose dimensions shape inference knows, the first (the batch)
  // possibly unknown.
  std::optional<Val> shape_of(const onnx::NodeProto& n) const {
    if (n.input_size() < 1) return std::nullopt;
    const auto it = shapes_.find(n.input(0));
    if (it == shapes_.end() || !it->second->type().has_tensor_type() ||
        !it->second->type().tensor_type().has_shape()) {
      return std::nullopt;
    }
    const auto& dims = it->second->type().tensor_type().shape().dim();
    std::vector<int64_t> sizes;
    std::vector<char> batch;
    for (int k = 0; k < dims.size(); ++k) {
      const bool known = dims[k].has_dim_value() && dims[k].dim_value() >= 0;
      if (!known && !(k == 0 && batch_first(n.input(0)))) return std::nullopt;
      sizes.push_back(known ? dims[k].dim_value() : 0);
      batch.push_back(known ? 0 : 1);
    }
    return shape_from(n, sizes, batch);
  }

  // The Shape node n's output for these dimensions (batch: which is the batch size; empty for
  // none), its start and end attributes applied.
  static std::optional<Val> shape_from(const onnx::NodeProto& n, const std::vector<int64_t>& sizes,
                                       const std::vector<char>& batch) {
    Val v;
    v.i = sizes;
    v.batch = batch.empty() ? std::vector<char>(sizes.size(), 0) : batch;
    const int64_t r = static_cast<int64_t>(v.i.size());
    int64_t start = attr_int(n, "start", 0), end = attr_int(n, "end", r);
    start = std::clamp<int64_t>(start < 0 ? start + r : start, 0, r);
    end = std::clamp<int64_t>(end < 0 ? end + r : end, 0, r);
    v.i = std::vector<int64_t>(v.i.begin() + start, v.i.begin() + std::max(start, end));
    v.batch = std::vector<char>(v.batch.begin() + start, v.batch.begin() + std::max(start, end));
    v.dims = {static_cast<int64_t>(v.i.size())};
    return v;
  }

  static std::optional<Val> constant_of_shape(const onnx::NodeProto& n, const Val& shape) {
    if (!plain_ints(shape) || shape.dims.size() != 1) return std::nullopt;
    Val fill;
    fill.is_float = true;
    fill.f = {0.0};
    if (const auto* a = attr(n, "value")) {
      auto t = from_tensor(a->t());
      if (!t || t->size() != 1) return std::nullopt;
      fill = *t;
    }
    const auto count = count_of(shape.i);
    if (!count) return std::nullopt;
    Val v = take(fill, shape.i, std::vector<int64_t>(*count, 0));
    return v;
  }

  static std::optional<Val> gather(const Val& x, const Val& idx, int64_t axis_attr) {
    const auto axis = axis_in(axis_attr, x.dims.size());
    if (!axis || !plain_ints(idx)) return std::nullopt;
    const int64_t len = x.dims[*axis];
    std::vector<int64_t> index = idx.i;
    for (auto& k : index) {
      if (k < -len || k >= len) return std::nullopt;
      if (k < 0) k += len;
    }
    std::vector<int64_t> dims(x.dims.begin(), x.dims.begin() + *axis);
    dims.insert(dims.end(), idx.dims.begin(), idx.dims.end());
    dims.insert(dims.end(), x.dims.begin() + *axis + 1, x.dims.end());
    const auto xs = strides_of(x.dims);
    const size_t ir = idx.dims.size();
    const auto is = strides_of(idx.dims);
    return gather_elements(x, dims, [&](const std::vector<int64_t>& m) {
      int64_t src = 0, flat = 0;
      for (int64_t k = 0; k < *axis; ++k) src += m[k] * xs[k];
      for (size_t k = 0; k < ir; ++k) flat += m[*axis + k] * is[k];
      src += index[flat] * xs[*axis];
      for (size_t k = *axis + 1; k < x.dims.size(); ++k) src += m[k - 1 + ir] * xs[k];
      return src;
    });
  }

  static std::optional<Val> unsqueeze(const Val& x, const std::optional<std::vector<int64_t>>& axes) {
    if (!axes) return std::nullopt;
    const size_t rank = x.dims.size() + axes->size();
    std::set<int64_t> at;
    for (int64_t a : *axes) {
      const auto k = axis_in(a, rank);
      if (!k || !at.insert(*k).second) return std::nullopt;
    }
    Val v = x;
    v.dims.clear();
    size_t from = 0;
    for (size_t k = 0; k < rank; ++k) v.dims.push_back(at.count(static_cast<int64_t>(k)) ? 1 : x.dims[from++]);
    return v;
  }

  static std::optional<Val> squeeze(const Val& x, const std::optional<std::vector<int64_t>>& axes) {
    std::set<int64_t> at;
    if (axes) {
      for (int64_t a : *axes) {
        const auto k = axis_in(a, x.dims.size());
        if (!k || x.dims[*k] != 1) return std::nullopt;
        at.insert(*k);
      }
    }
    Val v = x;
    v.dims.clear();
    for (size_t k = 0; k < x.dims.size(); ++k) {
      const bool drop = axes ? at.count(static_cast<int64_t>(k)) > 0 : x.dims[k] == 1;
      if (!drop) v.dims.push_back(x.dims[k]);
    }
    return v;
  }

  static std::optional<Val> concat(const std::vector<const Val*>& in, int64_t axis_attr) {
    const Val& a = *in[0];
    const auto axis = axis_in(axis_attr, a.dims.size());
    if (!axis) return std::nullopt;
    Val v;
    v.is_float = a.is_float;
    v.dims = a.dims;
    v.dims[*axis] = 0;
    for (const Val* p : in) {
      if (p->is_float != a.is_float || p->dims.size() != a.dims.size()) return std::nullopt;
      for (size_t k = 0; k < a.dims.size(); ++k) {
        if (static_cast<int64_t>(k) != *axis && p->dims[k] != a.dims[k]) return std::nullopt;
      }
      v.dims[*axis] += p->dims[*axis];
    }
    // Outer blocks (dims before the axis) of each input, one after another.
    int64_t outer = 1;
    for (int64_t k = 0; k < *axis; ++k) outer *= a.dims[k];
    for (int64_t o = 0; o < outer; ++o) {
      for (const Val* p : in) {
        const int64_t block = static_cast<int64_t>(p->size()) / std::max<int64_t>(outer, 1);
        for (int64_t e = 0; e < block; ++e) {
          if (v.is_float) v.f.push_back(p->f[o * block + e]);
          else v.i.push_back(p->i[o * block + e]);
          if (!v.is_float) v.batch.push_back(p->batch.empty() ? 0 : p->batch[o * block + e]);
        }
      }
    }
    return v;
  }

  static std::optional<Val> reshape(const Val& x, const Val& shape, bool allow_zero) {
    if (!plain_ints(shape) || shape.dims.size() != 1) return std::nullopt;
    std::vector<int64_t> dims = shape.i;
    int64_t known = 1, infer = -1;
    for (size_t k = 0; k < dims.size(); ++k) {
      if (dims[k] == 0 && !allow_zero) {
        if (k >= x.dims.size()) return std::nullopt;
        dims[k] = x.dims[k];
      }
      if (dims[k] == -1) {
        if (infer >= 0) return std::nullopt;
        infer = static_cast<int64_t>(k);
      } else if (dims[k] < 0) {
        return std::nullopt;
      } else if (__builtin_mul_overflow(known, dims[k], &known)) {
        return std::nullopt;
      }
    }
    const int64_t n = static_cast<int64_t>(x.size());
    if (infer >= 0) {
      if (known == 0 || n % known != 0) return std::nullopt;
      dims[infer] = n / known;
    }
    if (count_of(dims) != n) return std::nullopt;
    Val v = x;
    v.dims = dims;
    return v;
  }

  static std::optional<Val> slice(const Val& x, const Val* starts, const Val* ends, const Val* axes_in,
                                  const Val* steps_in) {
    if (!starts || !ends || !plain_ints(*starts) || !plain_ints(*ends) || starts->i.size() != ends->i.size()) {
      return std::nullopt;
    }
    const size_t r = x.dims.size();
    std::vector<int64_t> axes(starts->i.size()), steps(starts->i.size(), 1);
    std::iota(axes.begin(), axes.end(), 0);
    if (axes_in) {
      if (!plain_ints(*axes_in) || axes_in->i.size() != axes.size()) return std::nullopt;
      axes = axes_in->i;
    }
    if (steps_in) {
      if (!plain_ints(*steps_in) || steps_in->i.size() != steps.size()) return std::nullopt;
      steps = steps_in->i;
    }
    std::vector<int64_t> begin(r, 0), step(r, 1), dims = x.dims;
    for (size_t k = 0; k < axes.size(); ++k) {
      const auto a = axis_in(axes[k], r);
      if (!a || steps[k] == 0 || steps[k] == std::numeric_limits<int64_t>::min()) return std::nullopt;
      const int64_t len = x.dims[*a];
      if (len == 0) {
        dims[*a] = 0;
        continue;
      }
      int64_t s = starts->i[k], e = ends->i[k];
      if (s < 0) s += len;
      if (e < 0 && e != std::numeric_limits<int64_t>::min()) e += len;
      if (steps[k] > 0) {
        s = std::clamp<int64_t>(s, 0, len);
        e = std::clamp<int64_t>(e, 0, len);
        dims[*a] = e > s ? (e - s + steps[k] - 1) / steps[k] : 0;
      } else {
        s = std::clamp<int64_t>(s, 0, len - 1);
        e = std::clamp<int64_t>(e, -1, len - 1);
        dims[*a] = s > e ? (s - e - steps[k] - 1) / -steps[k] : 0;
      }
      begin[*a] = s;
      step[*a] = steps[k];
    }
    const auto xs = strides_of(x.dims);
    return gather_elements(x, dims, [&](const std::vector<int64_t>& m) {
      int64_t src = 0;
      for (size_t k = 0; k < r; ++k) src += (begin[k] + m[k] * step[k]) * xs[k];
      return src;
    });
  }

  // Add, Sub or Mul with NumPy broadcasting: int64 arithmetic (an overflow is not folded), or
  // float32 as the network computes it. Not on the batch size.
  static std::optional<Val> arithmetic(const std::string& op, const Val& a, const Val& b) {
    if (a.is_float != b.is_float || a.has_batch() || b.has_batch()) return std::nullopt;
    const size_t r = std::max(a.dims.size(), b.dims.size());
    std::vector<int64_t> dims(r), sa(r, 0), sb(r, 0);
    const auto as = strides_of(a.dims), bs = strides_of(b.dims);
    for (size_t k = 0; k < r; ++k) {
      const size_t ka = k + a.dims.size(), kb = k + b.dims.size();  // >= r where the axis exists
      const int64_t da = ka >= r ? a.dims[ka - r] : 1, db = kb >= r ? b.dims[kb - r] : 1;
      if (da != db && da != 1 && db != 1) return std::nullopt;
      dims[k] = da == 1 ? db : da;
      if (ka >= r && da != 1) sa[k] = as[ka - r];
      if (kb >= r && db != 1) sb[k] = bs[kb - r];
    }
    const auto n = count_of(dims);
    if (!n) return std::nullopt;
    Val v;
    v.dims = dims;
    v.is_float = a.is_float;
    std::vector<int64_t> m(r, 0);
    for (int64_t e = 0; e < *n; ++e) {
      int64_t ia = 0, ib = 0;
      for (size_t k = 0; k < r; ++k) {
        ia += m[k] * sa[k];
        ib += m[k] * sb[k];
      }
      if (v.is_float) {
        const float x = static_cast<float>(a.f[ia]), y = static_cast<float>(b.f[ib]);
        v.f.push_back(op == "Add" ? x + y : op == "Sub" ? x - y : x * y);
      } else {
        int64_t z = 0;
        const bool overflow = op == "Add"   ? __builtin_add_overflow(a.i[ia], b.i[ib], &z)
                              : op == "Sub" ? __builtin_sub_overflow(a.i[ia], b.i[ib], &z)
                                            : __builtin_mul_overflow(a.i[ia], b.i[ib], &z);
        if (overflow) return std::nullopt;
        v.i.push_back(z);
      }
      for (int k = static_cast<int>(r) - 1; k >= 0; --k) {
        if (++m[k] < dims[k]) break;
        m[k] = 0;
      }
    }
    return v;
  }

  static std::optional<Val> transpose(const Val& x, const std::vector<int64_t>& perm) {
    if (perm.size() != x.dims.size()) return std::nullopt;
    std::vector<int64_t> dims(perm.size());
    std::vector<char> used(perm.size(), 0);
    for (size_t k = 0; k < perm.size(); ++k) {
      if (perm[k] < 0 || perm[k] >= static_cast<int64_t>(perm.size()) || used[perm[k]]) return std::nullopt;
      used[perm[k]] = 1;
      dims[k] = x.dims[perm[k]];
    }
    const auto xs = strides_of(x.dims);
    return gather_elements(x, dims, [&](const std::vector<int64_t>& m) {
      int64_t src = 0;
      for (size_t k = 0; k < perm.size(); ++k) src += m[k] * xs[perm[k]];
      return src;
    });
  }

  static std::optional<Val> cast(const Val& x, int64_t to) {
    Val v;
    v.dims = x.dims;
    if (to == onnx::TensorProto::INT64 || to == onnx::TensorProto::INT32) {
      if (!x.is_float) {
        v.i = x.i;
        v.batch = x.batch;
        for (int64_t k : v.i) {  // int64 -> int32 wraps: not folded
          if (to == onnx::TensorProto::INT32 &&
              (k < std::numeric_limits<int32_t>::min() || k > std::numeric_limits<int32_t>::max())) {
            return std::nullopt;
          }
        }
        return v;
      }
      for (double d : x.f) {
        if (!(d > -9.2e18 && d < 9.2e18)) return std::nullopt;  // NaN or out of range: undefined
        v.i.push_back(static_cast<int64_t>(d));
      }
      if (to == onnx::TensorProto::INT32) {
        for (int64_t k : v.i) {
          if (k < std::numeric_limits<int32_t>::min() || k > std::numeric_limits<int32_t>::max()) return std::nullopt;
        }
      }
      return v;
    }
    if (to == onnx::TensorProto::FLOAT || to == onnx::TensorProto::DOUBLE) {
      v.is_float = true;
      if (x.is_float) {
        v.f = x.f;
        if (to == onnx::TensorProto::FLOAT) {
          for (double& d : v.f) d = static_cast<float>(d);
        }
        return v;
      }
      if (!plain_ints(x)) return std::nullopt;
      for (int64_t k : x.i) v.f.push_back(to == onnx::TensorProto::FLOAT ? static_cast<float>(k) : static_cast<double>(k));
      return v;
    }
    return std::nullopt;
  }

  int opset_;
  std::map<std::string, const onnx::ValueInfoProto*> shapes_;
  std::string batch_symbol_;
};

onnx::TensorProto to_tensor(const std::string& name, const Val& v) {
  onnx::TensorProto t;
  t.set_name(name);
  for (int64_t d : v.dims) t.add_dims(d);
  if (v.is_float) {
    t.set_data_type(onnx::TensorProto::FLOAT);
    for (double d : v.f) t.add_float_data(static_cast<float>(d));
  } else {
    t.set_data_type(onnx::TensorProto::INT64);
    for (int64_t k : v.i) t.add_int64_data(k);
  }
  return t;
}

const std::set<std::string>& foldable_ops() {
  static const std::set<std::string> ops = {"Constant", "ConstantOfShape", "Shape", "Gather",    "Unsqueeze",
                                            "Squeeze",  "Concat",          "Reshape", "Slice",  "Transpose",
                                            "Cast",     "Identity",        "Add",   "Sub",    "Mul"};
  return ops;
}

}  // namespace

namespace {

// One pass: what is foldable with the shapes inference finds now.
int fold_once(onnx::ModelProto& model) {
  const onnx::GraphProto& graph = model.graph();
  // Only where there is something to fold that qsweep does not run itself.
  static const std::set<std::string> not_run = {"ConstantOfShape", "Shape", "Gather",    "Unsqueeze", "Squeeze",
                                                "Slice",           "Cast",  "Transpose", "Sub"};
  if (std::none_of(graph.node().begin(), graph.node().end(),
                   [](const onnx::NodeProto& n) { return not_run.count(n.op_type()) > 0; })) {
    return 0;
  }
  int opset = 0;
  for (const auto& imp : model.opset_import()) {
    if (imp.domain().empty() || imp.domain() == "ai.onnx") opset = static_cast<int>(imp.version());
  }
  // Shapes of the values Shape nodes read, from ONNX's shape inference on a copy.
  onnx::ModelProto inferred = model;
  try {
    onnx::shape_inference::InferShapes(inferred);
  } catch (const std::exception&) {
    // Shape nodes are then not folded; the rest may be.
  }
  const Folder folder(inferred, opset);

  std::map<std::string, Val> known;
  for (const auto& init : graph.initializer()) {
    if (auto v = from_tensor(init)) known.emplace(init.name(), std::move(*v));
  }
  std::vector<char> folded(graph.node_size(), 0);
  for (int k = 0; k < graph.node_size(); ++k) {
    const auto& n = graph.node(k);
    const bool standard = n.domain().empty() || n.domain() == "ai.onnx";
    if (!standard || !foldable_ops().count(n.op_type())) continue;
    std::vector<const Val*> in;
    bool all = true;
    for (const auto& name : n.input()) {
      if (name.empty()) {
        in.push_back(nullptr);
        continue;
      }
      const auto it = known.find(name);
      // Shape reads a value's dimensions, not its values.
      if (it == known.end() && n.op_type() != "Shape") all = false;
      in.push_back(it == known.end() ? nullptr : &it->second);
    }
    if (!all) continue;
    auto out = folder.eval(n, in);
    if (!out || static_cast<int>(out->size()) != n.output_size()) continue;
    for (int o = 0; o < n.output_size(); ++o) known[n.output(o)] = std::move((*out)[o]);
    folded[k] = 1;
  }
  // What the remaining nodes and the graph's outputs read of the folded values.
  std::set<std::string> produced;
  for (int k = 0; k < graph.node_size(); ++k) {
    if (!folded[k]) continue;
    for (const auto& o : graph.node(k).output()) produced.insert(o);
  }
  if (produced.empty()) return 0;
  std::map<std::string, Val> needed;
  for (int k = 0; k < graph.node_size(); ++k) {
    if (folded[k]) continue;
    const auto& n = graph.node(k);
    for (int i = 0; i < n.input_size(); ++i) {
      if (!produced.count(n.input(i))) continue;
      Val v = known.at(n.input(i));
      if (v.has_batch()) {
        // Only a Reshape's shape with the batch size first: 0 copies the input's first
        // dimension (allowzero 0). Anything else cannot be a constant: leave the model as it is.
        // The data must be a run-time value (with the batch first), not a constant.
        const bool reshape_shape = n.op_type() == "Reshape" && i == 1 && attr_int(n, "allowzero", 0) == 0 &&
                                   !known.count(n.input(0)) && folder.batch_first(n.input(0)) &&
                                   v.dims.size() == 1 && v.batch[0] == 1 &&
                                   std::count(v.batch.begin(), v.batch.end(), 1) == 1;
        if (!reshape_shape) return 0;
        // A distinct name: the same folded value may also be read elsewhere.
        v.i[0] = 0;
        v.batch.clear();
        needed.emplace(n.input(i) + "__qsweep_batch0", std::move(v));
        continue;
      }
      needed.emplace(n.input(i), std::move(v));
    }
  }
  for (const auto& o : graph.output()) {
    if (produced.count(o.name())) return 0;  // a network whose output is a constant: nothing to analyse
  }
  // Rewrite: the remaining nodes in order, reading the folded values as initializers.
  onnx::GraphProto* g = model.mutable_graph();
  google::protobuf::RepeatedPtrField<onnx::NodeProto> nodes;
  int removed = 0;
  for (int k = 0; k < g->node_size(); ++k) {
    if (folded[k]) {
      ++removed;
      continue;
    }
    onnx::NodeProto n = g->node(k);
    for (int i = 0; i < n.input_size(); ++i) {
      if (n.op_type() == "Reshape" && i == 1 && needed.count(n.input(i) + "__qsweep_batch0")) {
        n.set_input(i, n.input(i) + "__qsweep_batch0");
      }
    }
    *nodes.Add() = std::move(n);
  }
  g->mutable_node()->Swap(&nodes);
  std::set<std::string> initialized;
  for (const auto& init : g->initializer()) initialized.insert(init.name());
  for (const auto& [name, v] : needed) {
    if (!initialized.count(name)) *g->add_initializer() = to_tensor(name, v);
  }
  // Inferred shapes of the removed values go with them.
  google::protobuf::RepeatedPtrField<onnx::ValueInfoProto> infos;
  for (const auto& vi : g->value_info()) {
    if (!produced.count(vi.name())) *infos.Add() = vi;
  }
  g->mutable_value_info()->Swap(&infos);
  return removed;
}

}  // namespace

int fold_shape_computations(onnx::ModelProto& model) {
  // Pads folded in one pass let shape inference size what follows them, and so fold a Shape
  // of it in the next (F.pad, then x.view(x.size(0), -1)).
  int removed = 0;
  for (int pass = 0; pass < 4; ++pass) {
    const int n = fold_once(model);
    if (n == 0) break;
    removed += n;
  }
  return removed;
}

}  // namespace qsweep
