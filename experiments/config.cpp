#include "experiments/config.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "runtime/data.h"
#include "runtime/error.h"

namespace qsweep {

namespace fs = std::filesystem;

const std::vector<ConfigKey>& config_keys() {
  static const std::vector<ConfigKey> keys = {
      {"experiment.name", "string", "\"quickstart\"", "Name of the experiment; results go to `<output.root>/<name>/<run-id>/`."},
      {"experiment.kind", "string", "\"layerwise\"", "What to run. `\"layerwise\"`: the layer-wise grid (every layer x every weight bit-width)."},
      {"model.path", "string", "(required)", "ONNX file of the float32 network (opsets 11-17). Relative paths are resolved against the config file's folder."},
      {"data.dataset", "string", "\"fashion-mnist\"", "Dataset format. `\"fashion-mnist\"` / `\"mnist\"` / `\"idx\"`: IDX files (`train-*` and `t10k-*`, gzipped or not) in `data.path`."},
      {"data.path", "string", "\"/usr/share/datasets/fashion-mnist\"", "Folder of the dataset (default: where Debian's `dataset-fashion-mnist` installs it). Relative to the config file."},
      {"data.mean", "array of floats", "[0.2860]", "Per-channel mean; inputs are `(pixel / 255 - mean) / std`, one value per input channel."},
      {"data.std", "array of floats", "[0.3530]", "Per-channel standard deviation (see `data.mean`)."},
      {"data.calibration.split", "string", "\"train\"", "Split the activation ranges are calibrated on (`\"train\"` or `\"test\"`)."},
      {"data.calibration.count", "integer", "512", "Number of images (the first ones, in file order) used to calibrate activation ranges."},
      {"data.eval.split", "string", "\"test\"", "Split the metrics are computed on."},
      {"data.eval.count", "integer", "0", "Number of evaluation images (the first ones); 0 means the whole split."},
      {"quant.weight_bits", "array of integers", "[3, 4, 5, 6, 7, 8]", "Weight bit-widths of the grid (each 2..16)."},
      {"quant.act_bits", "integer", "8", "Bit-width of the quantized layer's input and output activations (2..16)."},
      {"quant.scheme", "string", "\"asymmetric\"", "`\"asymmetric\"` (affine, zero point) or `\"symmetric\"` (zero point 0, restricted range)."},
      {"quant.granularity", "string", "\"per-tensor\"", "Weight quantization granularity: `\"per-tensor\"` or `\"per-channel\"` (per output channel). Activations are always per tensor."},
      {"quant.quantize_input", "boolean", "true", "Fake-quantize the quantized layer's input activation (method.md step 1)."},
      {"quant.quantize_output", "boolean", "true", "Fake-quantize the quantized layer's output activation (method.md step 4)."},
      {"run.backend", "string", "\"auto\"", "`\"cpu\"`, `\"cuda\"` or `\"auto\"` (CUDA when built in and a device is present, else CPU)."},
      {"run.batch_size", "integer", "250", "Images per batch. Each batch is processed by one thread; results do not depend on the number of threads."},
      {"run.threads", "integer", "0", "CPU threads; 0 uses every core."},
      {"run.naive", "boolean", "false", "Run the grid the slow way (a full forward per cell), for comparison; the numbers are identical."},
      {"output.root", "string", "\"results\"", "Folder under which results are written (relative to the working directory)."},
      {"output.worst", "integer", "3", "How many worst layers per bit-width `summary.json` and the final printout list."},
  };
  return keys;
}

namespace {

struct Ctx {
  std::string file;                 // config path, or "built-in default"
  std::set<std::string> from_set;   // keys given by --set
};

std::string where_src(const Ctx& c, const std::string& key, const toml::source_region& src) {
  if (c.from_set.count(key)) return fmt::format("--set {}", key);
  if (src.begin.line == 0) return c.file;
  return fmt::format("{}:{}:{}", c.file, src.begin.line, src.begin.column);
}

std::string where(const Ctx& c, const std::string& key, const toml::node& n) { return where_src(c, key, n.source()); }

std::string with_article(const std::string& type) {
  return (std::string("aeiou").find(type[0]) != std::string::npos ? "an " : "a ") + type;
}

std::string type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    default: return "a date/time";
  }
}

const ConfigKey* find_key(const std::string& path) {
  for (const auto& k : config_keys()) {
    if (path == k.path) return &k;
  }
  return nullptr;
}

// Every known key below `prefix` (a table path), for "known keys" hints.
std::string known_below(const std::string& prefix) {
  std::vector<std::string> names;
  for (const auto& k : config_keys()) {
    std::string p = k.path;
    if (prefix.empty() || p.rfind(prefix + ".", 0) == 0) names.push_back(p);
  }
  return fmt::format("{}", fmt::join(names, ", "));
}

// The sections directly below `prefix` ("" for the top level), e.g. "experiment, model, ...".
std::string sections_below(const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& k : config_keys()) {
    std::string p = k.path;
    if (!prefix.empty()) {
      if (p.rfind(prefix + ".", 0) != 0) continue;
      p = p.substr(prefix.size() + 1);
    }
    const auto dot = p.find('.');
    if (dot == std::string::npos) continue;
    const std::string name = (prefix.empty() ? "" : prefix + ".") + p.substr(0, dot);
    if (std::find(out.begin(), out.end(), name) == out.end()) out.push_back(name);
  }
  return fmt::format("{}", fmt::join(out, ", "));
}

bool is_table_prefix(const std::string& path) {
  for (const auto& k : config_keys()) {
    if (std::string(k.path).rfind(path + ".", 0) == 0) return true;
  }
  return false;
}

void validate(const Ctx& c, const toml::table& t, const std::string& prefix) {
  for (const auto& [k, node] : t) {
    const std::string path = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    if (node.is_table()) {
      if (!is_table_prefix(path)) {
        user_error("{}: unknown section [{}]; known sections{}: {}", where_src(c, path, k.source()), path,
                   prefix.empty() ? "" : fmt::format(" in [{}]", prefix), sections_below(prefix));
      }
      validate(c, *node.as_table(), path);
      continue;
    }
    const ConfigKey* key = find_key(path);
    if (!key) {
      const auto dot = path.rfind('.');
      const std::string section = dot == std::string::npos ? "" : path.substr(0, dot);
      user_error("{}: unknown key '{}'; known keys{}: {}", where_src(c, path, k.source()), path,
                 section.empty() ? "" : fmt::format(" in [{}]", section), known_below(section));
    }
    const std::string type = key->type;
    auto expect = [&](bool ok) {
      if (!ok) user_error("{}: '{}' must be {}, not {}", where(c, path, node), path, with_article(type), type_name(node));
    };
    if (type == "string") expect(node.is_string());
    else if (type == "integer") expect(node.is_integer());
    else if (type == "boolean") expect(node.is_boolean());
    else if (type == "array of integers" || type == "array of floats") {
      expect(node.is_array());
      const bool want_int = type == "array of integers";
      for (const auto& e : *node.as_array()) {
        const bool ok = want_int ? e.is_integer() : (e.is_floating_point() || e.is_integer());
        if (!ok) user_error("{}: '{}' must be {}, but holds {}", where(c, path, node), path, with_article(type), type_name(e));
      }
    }
  }
}

void set_path(toml::table& root, const std::string& dotted, toml::node&& value, const std::string& arg) {
  toml::table* t = &root;
  size_t start = 0;
  while (true) {
    const size_t dot = dotted.find('.', start);
    const std::string part = dotted.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (part.empty()) user_error("--set {}: '{}' is not a dotted key such as quant.act_bits", arg, dotted);
    if (dot == std::string::npos) {
      t->insert_or_assign(part, std::move(value));
      return;
    }
    auto* child = t->get(part);
    if (!child) {
      t->insert(part, toml::table{});
      child = t->get(part);
    }
    if (!child->is_table()) user_error("--set {}: '{}' is a value, not a section", arg, dotted.substr(0, dot));
    t = child->as_table();
    start = dot + 1;
  }
}

std::string resolve(const std::string& p, const fs::path& base) {
  if (p.empty()) return p;
  fs::path path(p);
  if (path.is_relative()) path = base / path;
  return path.lexically_normal().string();
}

}  // namespace

std::string scheme_name(Scheme s) { return s == Scheme::kAsymmetric ? "asymmetric" : "symmetric"; }
std::string granularity_name(Granularity g) { return g == Granularity::kPerTensor ? "per-tensor" : "per-channel"; }

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  Ctx c;
  toml::table t;
  fs::path base = fs::current_path();
  if (!path.empty()) {
    std::error_code ec;
    if (!fs::is_regular_file(path, ec)) user_error("config file '{}' does not exist", path);
    c.file = path;
    try {
      t = toml::parse_file(path);
    } catch (const toml::parse_error& e) {
      user_error("{}:{}:{}: not valid TOML: {}", path, e.source().begin.line, e.source().begin.column,
                 e.description());
    }
    base = fs::absolute(path).parent_path();
  } else {
    c.file = "built-in default";
  }
  // Which string keys are file paths, and which of them came from --set (CWD-relative).
  std::map<std::string, std::string> set_values;
  for (const auto& o : overrides) {
    const auto eq = o.find('=');
    if (eq == std::string::npos) user_error("--set {}: expected KEY=VALUE, e.g. --set quant.act_bits=6", o);
    const std::string key = o.substr(0, eq);
    const std::string val = o.substr(eq + 1);
    toml::table snippet;
    try {
      snippet = toml::parse("v = " + val);
    } catch (const toml::parse_error& e) {
      user_error("--set {}: the value '{}' is not a TOML value ({}); strings need quotes, e.g. "
                 "--set 'model.path=\"m.onnx\"'", o, val, e.description());
    }
    auto* node = snippet.get("v");
    if (!node) user_error("--set {}: the value is empty", o);
    set_path(t, key, std::move(*node), o);
    c.from_set.insert(key);
  }
  validate(c, t, "");

  Config cfg;
  cfg.source = c.file;
  auto str = [&](const char* k, std::string& out) {
    if (auto v = t.at_path(k).value<std::string>()) out = *v;
  };
  auto integer = [&](const char* k, auto& out) {
    if (auto v = t.at_path(k).value<int64_t>()) out = static_cast<std::remove_reference_t<decltype(out)>>(*v);
  };
  auto boolean = [&](const char* k, bool& out) {
    if (auto v = t.at_path(k).value<bool>()) out = *v;
  };
  auto floats = [&](const char* k, std::vector<float>& out) {
    if (auto* a = t.at_path(k).as_array()) {
      out.clear();
      for (const auto& e : *a) out.push_back(static_cast<float>(e.value<double>().value()));
    }
  };
  auto fail = [&](const char* k, const std::string& msg) {
    const toml::node* n = t.at_path(k).node();
    const std::string w = n ? where(c, k, *n) : c.file;
    user_error("{}: '{}' {}", w, k, msg);
  };
  auto path_key = [&](const char* k, std::string& out) {
    str(k, out);
    if (!out.empty()) out = resolve(out, c.from_set.count(k) ? fs::current_path() : base);
  };

  str("experiment.name", cfg.name);
  str("experiment.kind", cfg.kind);
  path_key("model.path", cfg.model_path);
  str("data.dataset", cfg.dataset);
  path_key("data.path", cfg.data_path);
  floats("data.mean", cfg.mean);
  floats("data.std", cfg.std);
  str("data.calibration.split", cfg.calibration_split);
  integer("data.calibration.count", cfg.calibration_count);
  str("data.eval.split", cfg.eval_split);
  integer("data.eval.count", cfg.eval_count);
  if (auto* a = t.at_path("quant.weight_bits").as_array()) {
    cfg.weight_bits.clear();
    for (const auto& e : *a) cfg.weight_bits.push_back(static_cast<int>(*e.value<int64_t>()));
  }
  integer("quant.act_bits", cfg.act_bits);
  std::string scheme = scheme_name(cfg.scheme), gran = granularity_name(cfg.granularity);
  str("quant.scheme", scheme);
  str("quant.granularity", gran);
  boolean("quant.quantize_input", cfg.quantize_input);
  boolean("quant.quantize_output", cfg.quantize_output);
  str("run.backend", cfg.backend);
  integer("run.batch_size", cfg.batch_size);
  integer("run.threads", cfg.threads);
  boolean("run.naive", cfg.naive);
  str("output.root", cfg.root);
  integer("output.worst", cfg.worst);

  // Values.
  if (cfg.name.empty() || cfg.name.find_first_of("/\\") != std::string::npos || cfg.name[0] == '.') {
    fail("experiment.name", "must be a non-empty name without slashes that does not start with '.'");
  }
  if (cfg.kind != "layerwise") fail("experiment.kind", fmt::format("is \"{}\"; accepted: \"layerwise\"", cfg.kind));
  if (cfg.model_path.empty()) {
    user_error("{}: 'model.path' is required (the ONNX file to analyse), e.g. model.path = \"model.onnx\"", c.file);
  }
  if (cfg.dataset != "fashion-mnist" && cfg.dataset != "mnist" && cfg.dataset != "idx") {
    fail("data.dataset", fmt::format("is \"{}\"; accepted: \"fashion-mnist\", \"mnist\", \"idx\"", cfg.dataset));
  }
  if (cfg.data_path.empty()) {
    if (cfg.dataset != "fashion-mnist") fail("data.dataset", "needs data.path (the folder of the IDX files)");
    cfg.data_path = kFashionMnistDir;
  }
  if (cfg.mean.empty() || cfg.mean.size() != cfg.std.size()) {
    fail("data.std", fmt::format("must have as many values as data.mean ({} vs {})", cfg.std.size(), cfg.mean.size()));
  }
  for (float s : cfg.std) {
    if (!(s > 0.0f)) fail("data.std", "values must be positive");
  }
  for (const char* k : {"data.calibration.split", "data.eval.split"}) {
    const std::string& v = std::string(k) == "data.eval.split" ? cfg.eval_split : cfg.calibration_split;
    if (v != "train" && v != "test") fail(k, fmt::format("is \"{}\"; accepted: \"train\", \"test\"", v));
  }
  if (cfg.calibration_count < 1) fail("data.calibration.count", "must be at least 1");
  if (cfg.eval_count < 0) fail("data.eval.count", "must be 0 (all) or positive");
  if (cfg.weight_bits.empty()) fail("quant.weight_bits", "must list at least one bit-width");
  for (int b : cfg.weight_bits) {
    if (b < 2 || b > 16) fail("quant.weight_bits", fmt::format("holds {}; bit-widths must be 2..16", b));
  }
  std::vector<int> sorted = cfg.weight_bits;
  std::sort(sorted.begin(), sorted.end());
  if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) fail("quant.weight_bits", "lists a bit-width twice");
  if (cfg.act_bits < 2 || cfg.act_bits > 16) fail("quant.act_bits", "must be 2..16");
  if (scheme == "asymmetric") cfg.scheme = Scheme::kAsymmetric;
  else if (scheme == "symmetric") cfg.scheme = Scheme::kSymmetric;
  else fail("quant.scheme", fmt::format("is \"{}\"; accepted: \"asymmetric\", \"symmetric\"", scheme));
  if (gran == "per-tensor") cfg.granularity = Granularity::kPerTensor;
  else if (gran == "per-channel") cfg.granularity = Granularity::kPerChannel;
  else fail("quant.granularity", fmt::format("is \"{}\"; accepted: \"per-tensor\", \"per-channel\"", gran));
  if (cfg.backend != "cpu" && cfg.backend != "cuda" && cfg.backend != "auto") {
    fail("run.backend", fmt::format("is \"{}\"; accepted: \"cpu\", \"cuda\", \"auto\"", cfg.backend));
  }
  if (cfg.batch_size < 1) fail("run.batch_size", "must be at least 1");
  if (cfg.threads < 0) fail("run.threads", "must be 0 (every core) or positive");
  if (cfg.root.empty()) fail("output.root", "must not be empty");
  if (cfg.worst < 1) fail("output.worst", "must be at least 1");
  return cfg;
}

std::string config_to_toml(const Config& c) {
  auto ints = [](const std::vector<int>& v) {
    toml::array a;
    for (int x : v) a.push_back(x);
    return a;
  };
  auto flts = [](const std::vector<float>& v) {
    toml::array a;
    for (float x : v) a.push_back(static_cast<double>(x));
    return a;
  };
  toml::table t{
      {"experiment", toml::table{{"name", c.name}, {"kind", c.kind}}},
      {"model", toml::table{{"path", c.model_path}}},
      {"data", toml::table{{"dataset", c.dataset},
                           {"path", c.data_path},
                           {"mean", flts(c.mean)},
                           {"std", flts(c.std)},
                           {"calibration", toml::table{{"split", c.calibration_split}, {"count", c.calibration_count}}},
                           {"eval", toml::table{{"split", c.eval_split}, {"count", c.eval_count}}}}},
      {"quant", toml::table{{"weight_bits", ints(c.weight_bits)},
                            {"act_bits", c.act_bits},
                            {"scheme", scheme_name(c.scheme)},
                            {"granularity", granularity_name(c.granularity)},
                            {"quantize_input", c.quantize_input},
                            {"quantize_output", c.quantize_output}}},
      {"run", toml::table{{"backend", c.backend}, {"batch_size", c.batch_size}, {"threads", c.threads}, {"naive", c.naive}}},
      {"output", toml::table{{"root", c.root}, {"worst", c.worst}}},
  };
  std::ostringstream os;
  os << "# The configuration as run (defaults filled in, overrides applied).\n" << t << "\n";
  return os.str();
}

std::string config_keys_markdown() {
  std::string s = "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (const auto& k : config_keys()) s += fmt::format("| `{}` | {} | `{}` | {} |\n", k.path, k.type, k.default_value, k.doc);
  return s;
}

}  // namespace qsweep
