#include "experiments/config.h"

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <utility>

#include <fmt/format.h>
#include <toml++/toml.h>

#include "experiments/results.h"
#include "runtime/data.h"
#include "runtime/error.h"

namespace qsweep {

namespace fs = std::filesystem;

namespace {

// The documented keys; variant.quant.* mirrors of the quant.* keys are added below.
const std::vector<ConfigKey>& base_keys() {
  static const std::vector<ConfigKey> keys = {
      {"experiment.name", "string", "\"quickstart\"", "Name of the experiment; results go to `<output.root>/<name>/<run-id>/`."},
      {"experiment.kind", "string", "\"layerwise\"", "What to run: `\"layerwise\"` (every layer x every weight bit-width, one layer quantized at a time), `\"additivity\"` (random many-layer configurations, measured vs predicted from the grid), `\"full\"` (the whole network quantized under [quant], or one row per [[variant]] in `comparison.csv`)."},
      {"model.path", "string", "(required)", "ONNX file of the float32 network (opsets 11-17). Relative paths are resolved against the config file's folder."},
      {"data.dataset", "string", "\"fashion-mnist\"", "Dataset format. `\"fashion-mnist\"` / `\"mnist\"` / `\"idx\"`: IDX files (`train-*` and `t10k-*`, gzipped or not) in `data.path`. `\"imagefolder\"`: JPEG and PNG files in torchvision's ImageFolder layout, `<data.path>/<split>/<class>/<image>.jpg` (classes sorted by name are the labels 0, 1, ...; files in sorted order), read as RGB (grayscale for a 1-channel model) and brought to the model's input size by `data.resize` and `data.crop`."},
      {"data.path", "string", "\"/usr/share/datasets/fashion-mnist\"", "Folder of the dataset (default: where Debian's `dataset-fashion-mnist` installs it). Relative to the config file."},
      {"data.mean", "array of floats", "[0.2860]", "Per-channel mean; inputs are `(pixel / 255 - mean) / std`, one value per input channel."},
      {"data.std", "array of floats", "[0.3530]", "Per-channel standard deviation (see `data.mean`)."},
      {"data.resize", "integer", "0", "Image folders: torchvision's `Resize(resize)`, the shorter side to this many pixels (PIL bilinear, antialiased, bit for bit); 0: no resize."},
      {"data.crop", "integer", "0", "Image folders: torchvision's `CenterCrop(crop)` after the resize (zero-padded where the image is smaller); 0: no crop, and then every image must come out one size."},
      {"data.calibration.split", "string", "\"train\"", "Split the activation ranges are calibrated on (`\"train\"` or `\"test\"`; for an image folder, the name of any subfolder of `data.path`)."},
      {"data.calibration.count", "integer", "512", "Number of images (the first ones, in `data.calibration.order`) used to calibrate activation ranges (and bias correction)."},
      {"data.calibration.order", "string", "\"file\"", "Which images are the first ones: `\"file\"` (file order, method.md's default), `\"interleaved\"` (one image of each class in turn, classes by label and each class in file order: a class-balanced sample), or `\"shuffled\"` (seeded by `data.seed`). An image folder's file order goes class by class, so its first 512 images may all be of one class: use `\"interleaved\"` or `\"shuffled\"` there, or a calibration split of its own."},
      {"data.eval.split", "string", "\"test\"", "Split the metrics are computed on (as `data.calibration.split`; an image folder's validation split is often `\"val\"`)."},
      {"data.eval.count", "integer", "0", "Number of evaluation images (the first ones, in `data.eval.order`); 0 means the whole split."},
      {"data.eval.order", "string", "\"file\"", "As `data.calibration.order`, for the evaluation images. With the whole split evaluated the same images are counted: top-1 and top-5 do not change, noise only by the order of the sums; the bootstrap intervals do, as they resample image positions."},
      {"data.seed", "integer", "0", "Seed of `\"shuffled\"` orders: qsweep's own Fisher-Yates shuffle on mt19937_64, so the same seed picks the same images on every machine."},
      {"quant.weight_bits", "array of integers", "[3, 4, 5, 6, 7, 8]", "Weight bit-widths (each 2..16): the grid's columns for `layerwise`; for `full`, give one value (the bit-width of every layer not overridden); not used by `additivity` (a note says so), whose bit-widths are `additivity.low_bits` and `high_bits`."},
      {"quant.act_bits", "integer", "8", "Bit-width of a quantized layer's input and output activations (2..16)."},
      {"quant.scheme", "string", "\"asymmetric\"", "`\"asymmetric\"` (affine, zero point) or `\"symmetric\"` (zero point 0, restricted range); weights and activations."},
      {"quant.granularity", "string", "\"per-tensor\"", "Weight quantization granularity: `\"per-tensor\"` or `\"per-channel\"` (per output channel). Activations are always per tensor."},
      {"quant.weight_clip", "string", "\"minmax\"", "Weight range: `\"minmax\"`, `\"sawb\"` (Choi et al. 2018: clip alpha = c1 * sqrt(E[w^2]) - c2 * E[|w|], range [-alpha, alpha] within [min, max]; 2..8 bits; c1, c2 from the paper for 2..4 bits and from IBM's reference implementation for 5, 7 and 8; 6 bits has no published pair and is interpolated between 5 and 7; a slice where the formula gives no clip above 1e-3 of its largest |w| (it can reach zero or below for a few equal-magnitude weights, e.g. a small per-channel slice) is not clipped; per-channel SAWB on slices of a few weights follows the formula, which was fitted per tensor), `\"mse\"` (clip minimizing the weights' quantization MSE on a grid, see `quant.mse_grid`), `\"percentile\"` (see `quant.percentile`)."},
      {"quant.percentile", "float", "99.99", "For `weight_clip = \"percentile\"`: the range is [P(100 - p), P(p)] of the weights (per tensor or per channel)."},
      {"quant.mse_grid", "integer", "100", "For `weight_clip = \"mse\"`: clip candidates alpha_k = max|w| * k / N, k = 1..N, computed in float32 as (max|w| * k) / N; the range is [-alpha, alpha] within [min, max], the error the float64 sum of (w - fake_quant(w))^2 over the slice, and the smallest alpha wins ties."},
      {"quant.quantize_input", "boolean", "true", "Fake-quantize a quantized layer's input activation (method.md step 1)."},
      {"quant.quantize_output", "boolean", "true", "Fake-quantize a quantized layer's output activation (method.md step 4)."},
      {"quant.equalization", "boolean", "false", "Cross-layer equalization (Nagel et al. 2019; Meller et al. 2019) of every Conv -> ReLU -> Conv pair before calibration."},
      {"quant.bias_correction", "boolean", "false", "Empirical bias correction: each quantized layer's bias absorbs the mean output shift its quantization causes on the calibration images."},
      {"quant.layer", "array of tables", "[]", "Per-layer overrides, applied in order: `[[quant.layer]]` with `layers = [...]` and any of `weight_bits`, `act_bits`, `scheme`, `granularity`, `weight_clip`, `percentile`."},
      {"quant.layer.layers", "array of integers or strings", "(required)", "Which layers an override applies to: indices (integers), exact names, or glob patterns over names (`\"/layer3/*\"`). A string is a layer's exact name where a layer has it (names may be digits or hold `*?[`), else an index where it is all digits, else a pattern."},
      {"quant.layer.weight_bits", "integer", "(inherited)", "Weight bit-width of these layers (`full` and its variants; ignored by the grid, whose columns set it; refused by `additivity`, whose configurations set every layer's bit-width)."},
      {"quant.layer.act_bits", "integer", "(inherited)", "Activation bit-width of these layers."},
      {"quant.layer.scheme", "string", "(inherited)", "As `quant.scheme`, for these layers."},
      {"quant.layer.granularity", "string", "(inherited)", "As `quant.granularity`, for these layers."},
      {"quant.layer.weight_clip", "string", "(inherited)", "As `quant.weight_clip`, for these layers."},
      {"quant.layer.percentile", "float", "(inherited)", "As `quant.percentile`, for these layers."},
      {"variant", "array of tables", "[]", "For `kind = \"full\"`: one comparison row each. `[[variant]]` with `name`, `description` and `quant.*` keys that change the base [quant] (its `[[variant.quant.layer]]` overrides are applied after the base ones)."},
      {"variant.name", "string", "(required)", "Row name in `comparison.csv`."},
      {"variant.description", "string", "\"\"", "Free text shown beside the row."},
      {"additivity.configs", "integer", "20", "Number K of random configurations (subset sizes spread from 1 layer to all, no subset twice: a size with fewer distinct subsets than its share gives the rest to the nearest sizes; with more configurations than non-empty subsets, each subset is measured once)."},
      {"additivity.low_bits", "integer", "4", "Weight bit-width of the layers in a configuration's random subset; not equal to `high_bits`."},
      {"additivity.high_bits", "integer", "8", "Weight bit-width of the other layers; 0 leaves them in float32."},
      {"additivity.seed", "integer", "1", "Seed of the random subsets."},
      {"stats.bootstrap", "integer", "1000", "Paired bootstrap resamples (over images) for the degradation intervals; 0 turns intervals off."},
      {"stats.seed", "integer", "0", "Seed of the bootstrap."},
      {"stats.confidence", "float", "0.95", "Confidence level of the intervals."},
      {"run.backend", "string", "\"auto\"", "`\"cpu\"`, `\"cuda\"` or `\"auto\"` (CUDA when built in and a device is present, else CPU)."},
      {"run.batch_size", "integer or \"auto\"", "250", "Images per batch. Each batch is processed by one thread; results do not depend on the number of threads. `\"auto\"`: the CUDA backend picks the largest batch whose values fit in half of the free device memory (the CPU backend: about 4 batches per thread, 32 to 250 images each, i.e. 250 on a few cores, and no more than half of the available memory holds); it is settled once per run id (the first attempt or shard records its size in the work folder, and later attempts and shards take that size where it fits; a shard where it does not fit is refused before it computes, an unsharded resume computes again with a size that fits); on the CPU a number whose batches (one per busy thread) and the weights' copies would take more than 90% of the available memory is refused before the run, with the largest that fits (`QSWEEP_AVAILABLE_MEMORY=<bytes>` in the environment stands in for the available memory, e.g. to share a machine)."},
      {"run.tf32", "boolean", "false", "CUDA only: let cuDNN and cuBLAS use TF32 tensor cores for the float32 network and the unfused ops (faster on Ampere and later, about 3 decimal digits). Off, the reference network is plain FP32 (FMA math). Recorded in the manifest."},
      {"run.conv_transforms", "boolean", "false", "Let the network's convolutions use transform algorithms. CUDA: cuDNN may choose FFT and Winograd algorithms (ResNet18 on an H100: the grid ran 1.55-1.57x faster, top-1 identical on every cell, noise within 2e-4 relative). CPU with AVX-512: 3x3 stride-1 ungrouped convolutions whose channel counts are multiples of 16 (in + out >= 64) run as Winograd F(4x4, 3x3) (kernels/cpu/winograd.h), and ungrouped ones with 16 input channels and 16 or 32 outputs as direct sums reordered so that each input load feeds several outputs (kernels/cpu/strip_conv.h); the shipped ResNet's full grid ran 1.2-1.3x faster, with every cell's top-1 unchanged and noise within 3e-4 relative (bench/RESULTS.md). Still float32 arithmetic, but rounded differently from a direct convolution (a few times its rounding error), so numbers differ from a run without it in the last digits. Off, every convolution is a direct sum. Recorded in the manifest (a CPU without AVX-512 records false)."},
      {"run.threads", "integer", "0", "CPU threads, 1 to 1024; 0 uses every core."},
      {"run.devices", "\"all\" or array of integers", "\"all\"", "Devices to run on, one worker each (`[0, 2, 3]` or `\"all\"`). Workers split the batches and share the CPU cores; with the CPU backend `\"all\"` is one worker. Results are identical for any choice."},
      {"run.naive", "boolean", "false", "Run the grid the slow way (a full forward per cell), for comparison; the numbers are identical."},
      {"output.root", "string", "\"results\"", "Folder under which results are written (relative to the working directory)."},
      {"output.worst", "integer", "3", "How many worst layers per bit-width `summary.json` and the final printout list; also how many the figures highlight and histogram."},
      {"output.plots", "boolean", "true", "Draw the figures (`figures/*.png`, `*.svg`) with gnuplot; `false` writes only their data, scripts and `report.html`. Without gnuplot a run still succeeds and `qsweep report DIR` draws them later."},
      {"output.saturate", "float", "5.0", "Degradation (points) at which the heatmap's colour scale saturates."},
      {"output.bar_bits", "integer", "0", "Weight bit-width of the per-layer bar chart; 0 means the lowest bit-width of the grid. One of `quant.weight_bits`, or for `kind = \"additivity\"` `additivity.low_bits` or `high_bits`."},
  };
  return keys;
}

}  // namespace

const std::vector<ConfigKey>& config_keys() { return base_keys(); }

namespace {

// Every key the validator accepts: the documented ones plus variant.quant.* mirrors.
const std::vector<ConfigKey>& accepted_keys() {
  static const std::vector<ConfigKey> keys = [] {
    std::vector<ConfigKey> k = base_keys();
    static std::vector<std::string> names;  // keeps the mirrored paths alive
    names.reserve(64);
    for (const auto& key : base_keys()) {
      if (std::string(key.path).rfind("quant.", 0) == 0) names.push_back(std::string("variant.") + key.path);
    }
    size_t i = 0;
    for (const auto& key : base_keys()) {
      if (std::string(key.path).rfind("quant.", 0) == 0) k.push_back({names[i++].c_str(), key.type, key.default_value, key.doc});
    }
    return k;
  }();
  return keys;
}

}  // namespace

namespace {

struct Ctx {
  std::string file;                 // config path, or "built-in default"
  std::set<std::string> from_set;   // keys given by --set
};

std::string where_src(const Ctx& c, const std::string& key, const toml::source_region& src) {
  // A node read from the file carries its path (toml::parse_file); one from --set does not
  // (its line numbers count in the --set text), nor does a table --set created.
  if (src.path && src.begin.line != 0) return fmt::format("{}:{}:{}", c.file, src.begin.line, src.begin.column);
  if (c.from_set.count(key)) return fmt::format("--set {}", key);
  // Inside a table or array given by --set (--set 'quant.layer=[{...}]').
  for (const auto& k : c.from_set) {
    if (key.size() > k.size() && key.rfind(k, 0) == 0 && (key[k.size()] == '.' || key[k.size()] == '[')) {
      return fmt::format("--set {}", k);
    }
  }
  if (src.begin.line == 0) {
    // A section that only --set created (--set a.b=1 makes [a]): name the override.
    for (const auto& k : c.from_set) {
      if (k.rfind(key + ".", 0) == 0) return fmt::format("--set {}", k);
    }
    return c.file;
  }
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
  for (const auto& k : accepted_keys()) {
    if (path == k.path) return &k;
  }
  return nullptr;
}

// Every known key below `prefix` (a table path), for "known keys" hints.
std::string known_below(const std::string& prefix) {
  std::vector<std::string> names;
  for (const auto& k : accepted_keys()) {
    std::string p = k.path;
    if (prefix.empty() || p.rfind(prefix + ".", 0) == 0) names.push_back(p);
  }
  return fmt::format("{}", fmt::join(names, ", "));
}

// The sections directly below `prefix` ("" for the top level), e.g. "experiment, model, ...".
std::string sections_below(const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& k : accepted_keys()) {
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
  for (const auto& k : accepted_keys()) {
    if (std::string(k.path).rfind(path + ".", 0) == 0) return true;
  }
  return false;
}

void validate(const Ctx& c, const toml::table& t, const std::string& prefix) {
  for (const auto& [k, node] : t) {
    const std::string path = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    // A quoted key holding a dot ("quant.act_bits" = 4) is one key named with a dot, not
    // act_bits in [quant]: it would pass the key check below and never be read.
    if (k.str().find('.') != std::string_view::npos) {
      user_error("{}: the quoted key \"{}\" holds a dot; write it unquoted ({} = ...) or under its table ([{}])",
                 where_src(c, path, k.source()), k.str(), k.str(), path.substr(0, path.rfind('.')));
    }
    if (node.is_table()) {
      if (const ConfigKey* key = find_key(path); key != nullptr) {
        // [quant.layer] where [[quant.layer]] is meant: a table, read as nothing.
        if (std::string(key->type) == "array of tables") {
          user_error("{}: '{}' is a list of tables: write [[{}]] (double brackets), one per entry",
                     where_src(c, path, k.source()), path, path);
        }
        // [run.threads] where run.threads = ... is meant: a key written as a section.
        user_error("{}: '{}' is a key ({}), not a section: write {} = ... under [{}]", where_src(c, path, k.source()),
                   path, key->type, k.str(), prefix.empty() ? path : prefix);
      }
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
    else if (type == "integer or \"auto\"") {
      if (!node.is_integer() && !(node.is_string() && node.value_or(std::string()) == "auto")) {
        user_error("{}: '{}' must be an integer or \"auto\", not {}", where(c, path, node), path, type_name(node));
      }
    }
    else if (type == "float") expect(node.is_floating_point() || node.is_integer());
    else if (type == "boolean") expect(node.is_boolean());
    else if (type == "array of tables") {
      expect(node.is_array_of_tables() || (node.is_array() && node.as_array()->empty()));
      for (const auto& e : *node.as_array()) validate(c, *e.as_table(), path);
    } else if (type == "\"all\" or array of integers") {
      const bool ok = (node.is_string() && node.value_or(std::string()) == "all") ||
                      (node.is_array() && node.as_array()->is_homogeneous(toml::node_type::integer) &&
                       !node.as_array()->empty());
      if (!ok) user_error("{}: '{}' must be \"all\" or a non-empty array of device numbers, e.g. [0, 1]", where(c, path, node), path);
    } else if (type == "array of integers or strings") {
      expect(node.is_array());
      for (const auto& e : *node.as_array()) {
        if (!e.is_integer() && !e.is_string()) {
          user_error("{}: '{}' must hold layer indices (integers) or names/patterns (strings), but holds {}",
                     where(c, path, node), path, type_name(e));
        }
      }
    }
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

// Typed reads of validated keys, with positions for value errors.
struct Reader {
  const Ctx& c;
  const toml::table& t;
  fs::path base;

  std::string where_node(const std::string& key, const toml::node& n) const { return where(c, key, n); }
  [[noreturn]] void fail(const std::string& k, const std::string& msg) const {
    const toml::node* n = t.at_path(k).node();
    user_error("{}: '{}' {}", n ? where(c, k, *n) : c.file, k, msg);
  }
  void str(const char* k, std::string& out) const {
    if (auto v = t.at_path(k).value<std::string>()) out = *v;
  }
  template <typename T>
  void integer(const char* k, T& out) const {
    if (auto v = t.at_path(k).value<int64_t>()) {
      // A value the field cannot hold is refused, not wrapped (2^32 + 2 threads is not 2).
      if (!std::in_range<T>(*v)) {
        fail(k, fmt::format("is {}; it must be between {} and {}", *v, std::numeric_limits<T>::min(),
                            std::numeric_limits<T>::max()));
      }
      out = static_cast<T>(*v);
    }
  }
  void number(const char* k, double& out) const {
    if (auto v = t.at_path(k).value<double>()) out = *v;
  }
  void boolean(const char* k, bool& out) const {
    if (auto v = t.at_path(k).value<bool>()) out = *v;
  }
  void floats(const char* k, std::vector<float>& out) const {
    if (auto* a = t.at_path(k).as_array()) {
      out.clear();
      for (const auto& e : *a) out.push_back(static_cast<float>(e.value<double>().value()));
    }
  }
  void path_key(const char* k, std::string& out) const {
    str(k, out);
    if (!out.empty()) out = resolve(out, c.from_set.count(k) ? fs::current_path() : base);
  }
};

Scheme parse_scheme(const Reader& r, const std::string& key, const toml::node& n) {
  const std::string v = n.value_or(std::string());
  if (v == "asymmetric") return Scheme::kAsymmetric;
  if (v == "symmetric") return Scheme::kSymmetric;
  user_error("{}: '{}' is \"{}\"; accepted: \"asymmetric\", \"symmetric\"", r.where_node(key, n), key, v);
}

Granularity parse_granularity(const Reader& r, const std::string& key, const toml::node& n) {
  const std::string v = n.value_or(std::string());
  if (v == "per-tensor") return Granularity::kPerTensor;
  if (v == "per-channel") return Granularity::kPerChannel;
  user_error("{}: '{}' is \"{}\"; accepted: \"per-tensor\", \"per-channel\"", r.where_node(key, n), key, v);
}

ClipMethod parse_clip(const Reader& r, const std::string& key, const toml::node& n) {
  const std::string v = n.value_or(std::string());
  if (v == "minmax") return ClipMethod::kMinMax;
  if (v == "sawb") return ClipMethod::kSawb;
  if (v == "mse") return ClipMethod::kMse;
  if (v == "percentile") return ClipMethod::kPercentile;
  user_error("{}: '{}' is \"{}\"; accepted: \"minmax\", \"sawb\", \"mse\", \"percentile\"", r.where_node(key, n), key, v);
}

int parse_bits(const Reader& r, const std::string& key, const toml::node& n) {
  const int64_t b = n.value_or(int64_t{0});
  if (b < 2 || b > 16) user_error("{}: '{}' holds {}; bit-widths must be 2..16", r.where_node(key, n), key, b);
  return static_cast<int>(b);
}

double parse_percentile(const Reader& r, const std::string& key, const toml::node& n) {
  const double p = n.value_or(0.0);
  if (!(p > 50.0 && p <= 100.0)) user_error("{}: '{}' is {}; it must be in (50, 100]", r.where_node(key, n), key, p);
  return p;
}

// Reads a [quant] table (prefix "quant" or "variant.quant") on top of `q`.
void read_quant(const Reader& r, const toml::table& t, const std::string& prefix, QuantConfig& q) {
  auto key = [&](const char* k) { return prefix + "." + k; };
  if (const toml::array* a = t["weight_bits"].as_array()) {
    q.weight_bits.clear();
    for (const auto& e : *a) q.weight_bits.push_back(parse_bits(r, key("weight_bits"), e));
    if (q.weight_bits.empty()) user_error("{}: '{}' must list at least one bit-width", r.where_node(key("weight_bits"), *a), key("weight_bits"));
    std::vector<int> sorted = q.weight_bits;
    std::sort(sorted.begin(), sorted.end());
    if (std::adjacent_find(sorted.begin(), sorted.end()) != sorted.end()) {
      user_error("{}: '{}' lists a bit-width twice", r.where_node(key("weight_bits"), *a), key("weight_bits"));
    }
  }
  if (const toml::node* n = t.get("act_bits")) q.base.act_bits = parse_bits(r, key("act_bits"), *n);
  if (const toml::node* n = t.get("scheme")) q.base.scheme = parse_scheme(r, key("scheme"), *n);
  if (const toml::node* n = t.get("granularity")) q.base.granularity = parse_granularity(r, key("granularity"), *n);
  if (const toml::node* n = t.get("weight_clip")) q.base.clip = parse_clip(r, key("weight_clip"), *n);
  if (const toml::node* n = t.get("percentile")) q.base.percentile = parse_percentile(r, key("percentile"), *n);
  if (const toml::node* n = t.get("mse_grid")) {
    const int64_t v = n->value_or(int64_t{0});
    if (v < 2 || v > 10000) {
      user_error("{}: '{}' is {}; it must be 2 to 10000 (each candidate is a pass over the layer's weights)",
                 r.where_node(key("mse_grid"), *n), key("mse_grid"), v);
    }
    q.base.mse_grid = static_cast<int>(v);
  }
  if (auto v = t["quantize_input"].value<bool>()) q.base.quantize_input = *v;
  if (auto v = t["quantize_output"].value<bool>()) q.base.quantize_output = *v;
  if (auto v = t["equalization"].value<bool>()) q.equalization = *v;
  if (auto v = t["bias_correction"].value<bool>()) q.bias_correction = *v;
  if (const toml::array* layers = t["layer"].as_array()) {
    const std::string lp = key("layer");
    for (const auto& e : *layers) {
      const toml::table& lt = *e.as_table();
      LayerOverride o;
      o.where = r.where_node(lp, e);
      const toml::array* sel = lt["layers"].as_array();
      if (!sel || sel->empty()) user_error("{}: every [[{}]] needs a non-empty 'layers' list (indices, names or patterns)", o.where, lp);
      for (const auto& s : *sel) {
        o.selectors.push_back(s.is_integer() ? std::to_string(*s.value<int64_t>()) : *s.value<std::string>());
        o.is_index.push_back(s.is_integer() ? 1 : 0);
      }
      if (const toml::node* n = lt.get("weight_bits")) o.weight_bits = parse_bits(r, lp + ".weight_bits", *n);
      if (const toml::node* n = lt.get("act_bits")) o.act_bits = parse_bits(r, lp + ".act_bits", *n);
      if (const toml::node* n = lt.get("scheme")) o.scheme = parse_scheme(r, lp + ".scheme", *n);
      if (const toml::node* n = lt.get("granularity")) o.granularity = parse_granularity(r, lp + ".granularity", *n);
      if (const toml::node* n = lt.get("weight_clip")) o.clip = parse_clip(r, lp + ".weight_clip", *n);
      if (const toml::node* n = lt.get("percentile")) o.percentile = parse_percentile(r, lp + ".percentile", *n);
      q.layers.push_back(std::move(o));
    }
  }
}

}  // namespace

std::string clip_name(ClipMethod c) {
  switch (c) {
    case ClipMethod::kMinMax: return "minmax";
    case ClipMethod::kSawb: return "sawb";
    case ClipMethod::kMse: return "mse";
    case ClipMethod::kPercentile: return "percentile";
  }
  return "?";
}

std::string scheme_name(Scheme s) { return s == Scheme::kAsymmetric ? "asymmetric" : "symmetric"; }
std::string granularity_name(Granularity g) { return g == Granularity::kPerTensor ? "per-tensor" : "per-channel"; }

std::optional<std::pair<std::string, std::string>> split_set(const std::string& o) {
  const auto eq = o.find('=');
  if (eq == std::string::npos) return std::nullopt;
  std::string key = o.substr(0, eq);
  key.erase(0, key.find_first_not_of(" \t"));
  key.erase(key.find_last_not_of(" \t") + 1);
  return std::make_pair(key, o.substr(eq + 1));
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  Ctx c;
  toml::table t;
  fs::path base = fs::current_path();
  if (!path.empty()) {
    std::error_code ec;
    if (fs::is_directory(path, ec)) user_error("config file '{}' is a folder; give a TOML file", path);
    if (!fs::is_regular_file(path, ec)) {
      user_error("config file '{}' {}", path,
                 fs::exists(path, ec) ? "is not a regular file; give a TOML file" : "does not exist");
    }
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
    const auto kv = split_set(o);
    if (!kv) user_error("--set {}: expected KEY=VALUE, e.g. --set quant.act_bits=6", o);
    const auto& [key, val] = *kv;
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
  Reader r{c, t, base};
  r.str("experiment.name", cfg.name);
  r.str("experiment.kind", cfg.kind);
  r.path_key("model.path", cfg.model_path);
  r.str("data.dataset", cfg.dataset);
  r.path_key("data.path", cfg.data_path);
  r.floats("data.mean", cfg.mean);
  r.floats("data.std", cfg.std);
  r.integer("data.resize", cfg.resize);
  r.integer("data.crop", cfg.crop);
  r.str("data.calibration.split", cfg.calibration_split);
  r.integer("data.calibration.count", cfg.calibration_count);
  r.str("data.eval.split", cfg.eval_split);
  r.integer("data.eval.count", cfg.eval_count);
  r.str("data.calibration.order", cfg.calibration_order);
  r.str("data.eval.order", cfg.eval_order);
  r.integer("data.seed", cfg.data_seed);
  if (const toml::table* q = t["quant"].as_table()) read_quant(r, *q, "quant", cfg.quant);
  if (const toml::array* vs = t["variant"].as_array()) {
    for (const auto& v : *vs) {
      const toml::table& vt = *v.as_table();
      Variant var;
      var.quant = cfg.quant;
      const auto name = vt["name"].value<std::string>();
      if (!name || name->empty()) user_error("{}: every [[variant]] needs a non-empty name", r.where_node("variant", v));
      var.name = *name;
      var.description = vt["description"].value_or(std::string());
      if (const toml::table* q = vt["quant"].as_table()) read_quant(r, *q, "variant.quant", var.quant);
      for (const auto& other : cfg.variants) {
        if (other.name == var.name) user_error("{}: two variants are named '{}'", r.where_node("variant.name", *vt.get("name")), var.name);
      }
      cfg.variants.push_back(std::move(var));
    }
  }
  r.integer("additivity.configs", cfg.additivity_configs);
  r.integer("additivity.low_bits", cfg.low_bits);
  r.integer("additivity.high_bits", cfg.high_bits);
  r.integer("additivity.seed", cfg.additivity_seed);
  r.integer("stats.bootstrap", cfg.bootstrap);
  r.integer("stats.seed", cfg.stats_seed);
  r.number("stats.confidence", cfg.confidence);
  r.str("run.backend", cfg.backend);
  if (t.at_path("run.batch_size").is_string()) {
    cfg.batch_size = 0;  // "auto" (validated above)
  } else {
    r.integer("run.batch_size", cfg.batch_size);
  }
  r.boolean("run.tf32", cfg.tf32);
  r.boolean("run.conv_transforms", cfg.conv_transforms);
  r.integer("run.threads", cfg.threads);
  r.boolean("run.naive", cfg.naive);
  if (const toml::array* d = t.at_path("run.devices").as_array()) {
    for (const auto& e : *d) {
      const int64_t v = *e.value<int64_t>();
      if (v < 0) r.fail("run.devices", "holds a negative device number");
      if (std::find(cfg.devices.begin(), cfg.devices.end(), static_cast<int>(v)) != cfg.devices.end()) {
        r.fail("run.devices", "lists a device twice");
      }
      cfg.devices.push_back(static_cast<int>(v));
    }
  }
  r.str("output.root", cfg.root);
  r.integer("output.worst", cfg.worst);
  r.boolean("output.plots", cfg.plots);
  r.number("output.saturate", cfg.saturate);
  r.integer("output.bar_bits", cfg.bar_bits);

  // Values.
  auto fail = [&](const char* k, const std::string& msg) { r.fail(k, msg); };
  if (!is_folder_name(cfg.name)) {
    fail("experiment.name", "must be a non-empty name without slashes or control characters that does not start "
                            "with '.'");
  }
  if (cfg.name.size() > 160) fail("experiment.name", fmt::format("has {} characters; at most 160 make a folder name", cfg.name.size()));
  if (cfg.kind != "layerwise" && cfg.kind != "additivity" && cfg.kind != "full") {
    fail("experiment.kind", fmt::format("is \"{}\"; accepted: \"layerwise\", \"additivity\", \"full\"", cfg.kind));
  }
  if (cfg.model_path.empty()) {
    user_error("{}: 'model.path' is required (the ONNX file to analyse), e.g. model.path = \"model.onnx\"", c.file);
  }
  const bool image_folder = cfg.dataset == "imagefolder";
  if (cfg.dataset != "fashion-mnist" && cfg.dataset != "mnist" && cfg.dataset != "idx" && !image_folder) {
    fail("data.dataset",
         fmt::format("is \"{}\"; accepted: \"fashion-mnist\", \"mnist\", \"idx\", \"imagefolder\"", cfg.dataset));
  }
  if (cfg.data_path.empty()) {
    if (cfg.dataset != "fashion-mnist") {
      fail("data.dataset", image_folder ? "needs data.path (the folder that holds the split folders)"
                                        : "needs data.path (the folder of the IDX files)");
    }
    cfg.data_path = kFashionMnistDir;
  }
  for (const char* k : {"data.resize", "data.crop"}) {
    const int v = std::string(k) == "data.crop" ? cfg.crop : cfg.resize;
    if (v < 0 || v > 16384) fail(k, "must be 0 (none) or a size in pixels up to 16384");
    if (v > 0 && !image_folder) fail(k, "applies to image folders only (data.dataset = \"imagefolder\")");
  }
  if (cfg.mean.empty()) fail("data.mean", "must hold one value per image channel (it is empty)");
  if (cfg.mean.size() != cfg.std.size()) {
    fail("data.std", fmt::format("must have as many values as data.mean ({} vs {})", cfg.std.size(), cfg.mean.size()));
  }
  for (float m : cfg.mean) {
    if (!std::isfinite(m)) fail("data.mean", "values must be finite numbers");
  }
  for (float sd : cfg.std) {
    if (!(sd > 0.0f) || !std::isfinite(sd)) fail("data.std", "values must be positive finite numbers");
  }
  for (const char* k : {"data.calibration.split", "data.eval.split"}) {
    const std::string& v = std::string(k) == "data.eval.split" ? cfg.eval_split : cfg.calibration_split;
    if (image_folder) {
      if (v.empty() || v == "." || v == ".." || v.find_first_of("/\\") != std::string::npos) {
        fail(k, "must name a subfolder of data.path (no slashes)");
      }
    } else if (v != "train" && v != "test") {
      fail(k, fmt::format("is \"{}\"; accepted: \"train\", \"test\"", v));
    }
  }
  for (const char* k : {"data.calibration.order", "data.eval.order"}) {
    const std::string& v = std::string(k) == "data.eval.order" ? cfg.eval_order : cfg.calibration_order;
    ImageOrder order;
    if (!parse_image_order(v, order)) fail(k, fmt::format("is \"{}\"; accepted: \"file\", \"interleaved\", \"shuffled\"", v));
  }
  if (cfg.calibration_count < 1) fail("data.calibration.count", "must be at least 1");
  if (cfg.eval_count < 0) fail("data.eval.count", "must be 0 (all) or positive");
  if (cfg.kind == "full" && cfg.quant.weight_bits.size() != 1) {
    fail("quant.weight_bits", "must hold exactly one bit-width for kind = \"full\" (per-layer bit-widths go in [[quant.layer]])");
  }
  if (!cfg.quant.weight_bits.empty()) cfg.quant.base.weight_bits = cfg.quant.weight_bits.front();
  for (auto& v : cfg.variants) {
    if (v.quant.weight_bits.size() != 1 && cfg.kind == "full") {
      fail("variant.quant.weight_bits", fmt::format("of variant '{}' must hold exactly one bit-width", v.name));
    }
    if (!v.quant.weight_bits.empty()) v.quant.base.weight_bits = v.quant.weight_bits.front();
  }
  if (!cfg.variants.empty() && cfg.kind != "full") fail("variant", "is only used by kind = \"full\"");
  if (cfg.additivity_configs < 1 || cfg.additivity_configs > 100000) {
    fail("additivity.configs", "must be 1 to 100000 (each is a whole-network pass over the evaluation set)");
  }
  if (cfg.low_bits < 2 || cfg.low_bits > 16) fail("additivity.low_bits", "must be 2..16");
  if (cfg.high_bits != 0 && (cfg.high_bits < 2 || cfg.high_bits > 16)) fail("additivity.high_bits", "must be 0 (float32) or 2..16");
  // Equal widths make every configuration the same network (r and slope come out NaN).
  if (cfg.kind == "additivity" && cfg.low_bits == cfg.high_bits) {
    fail(t.at_path("additivity.low_bits").node() ? "additivity.low_bits" : "additivity.high_bits",
         fmt::format("gives low_bits = high_bits = {}: every configuration would be the same network; make them "
                     "differ (or high_bits = 0: float32 outside the subset)",
                     cfg.low_bits));
  }
  if (cfg.bootstrap < 0 || cfg.bootstrap > 100000) fail("stats.bootstrap", "must be 0 (no intervals) to 100000");
  if (!(cfg.confidence > 0.0 && cfg.confidence < 1.0)) fail("stats.confidence", "must be between 0 and 1");
  if (cfg.backend != "cpu" && cfg.backend != "cuda" && cfg.backend != "auto") {
    fail("run.backend", fmt::format("is \"{}\"; accepted: \"cpu\", \"cuda\", \"auto\"", cfg.backend));
  }
  if (cfg.batch_size < 0 || (cfg.batch_size == 0 && !t.at_path("run.batch_size").is_string())) {
    fail("run.batch_size", "must be at least 1 (or \"auto\")");
  }
  if (cfg.threads < 0 || cfg.threads > 1024) fail("run.threads", "must be 0 (every core) or 1 to 1024");
  if (cfg.root.empty()) fail("output.root", "must not be empty");
  if (cfg.worst < 1) fail("output.worst", "must be at least 1");
  if (!(cfg.saturate > 0.0)) fail("output.saturate", "must be positive");
  if (cfg.kind == "additivity") {  // its grid's columns: additivity.low_bits and high_bits
    if (cfg.bar_bits != 0 && cfg.bar_bits != cfg.low_bits && (cfg.high_bits == 0 || cfg.bar_bits != cfg.high_bits)) {
      fail("output.bar_bits",
           fmt::format("is {}; for kind = \"additivity\" it must be 0 (the lowest), additivity.low_bits ({}){}",
                       cfg.bar_bits, cfg.low_bits,
                       cfg.high_bits ? fmt::format(" or additivity.high_bits ({})", cfg.high_bits) : std::string()));
    }
  } else if (cfg.bar_bits != 0 && std::find(cfg.quant.weight_bits.begin(), cfg.quant.weight_bits.end(), cfg.bar_bits) ==
                                      cfg.quant.weight_bits.end()) {
    fail("output.bar_bits", fmt::format("is {}; it must be 0 (the lowest) or one of quant.weight_bits", cfg.bar_bits));
  }
  // A [[quant.layer]] weight_bits has no meaning in an additivity run (SAWB's bit range is
  // checked on the resolved layers, quant_plan.h check_sawb_bits, once the model is read).
  if (cfg.kind == "additivity") {
    for (const auto* q : {&cfg.quant}) {
      for (const LayerOverride& o : q->layers) {
        if (o.weight_bits) {
          user_error("{}: weight_bits does not apply to kind = \"additivity\", whose configurations set every "
                     "layer's bit-width from additivity.low_bits and additivity.high_bits; remove it (or compare "
                     "per-layer bit-widths with kind = \"full\")",
                     o.where);
        }
      }
    }
  }
  return cfg;
}

namespace {

toml::array int_array(const std::vector<int>& v) {
  toml::array a;
  for (int x : v) a.push_back(x);
  return a;
}

toml::table quant_table(const QuantConfig& q) {
  toml::table t{{"weight_bits", int_array(q.weight_bits)},
                {"act_bits", q.base.act_bits},
                {"scheme", scheme_name(q.base.scheme)},
                {"granularity", granularity_name(q.base.granularity)},
                {"weight_clip", clip_name(q.base.clip)},
                {"percentile", q.base.percentile},
                {"mse_grid", q.base.mse_grid},
                {"quantize_input", q.base.quantize_input},
                {"quantize_output", q.base.quantize_output},
                {"equalization", q.equalization},
                {"bias_correction", q.bias_correction}};
  toml::array layers;
  for (const auto& o : q.layers) {
    toml::array sel;
    for (size_t i = 0; i < o.selectors.size(); ++i) {
      const std::string& s = o.selectors[i];
      if (i < o.is_index.size() && o.is_index[i]) sel.push_back(static_cast<int64_t>(std::stoll(s)));
      else sel.push_back(s);  // a string of digits stays a string: it may be a layer's name
    }
    toml::table lt{{"layers", sel}};
    if (o.weight_bits) lt.insert("weight_bits", *o.weight_bits);
    if (o.act_bits) lt.insert("act_bits", *o.act_bits);
    if (o.scheme) lt.insert("scheme", scheme_name(*o.scheme));
    if (o.granularity) lt.insert("granularity", granularity_name(*o.granularity));
    if (o.clip) lt.insert("weight_clip", clip_name(*o.clip));
    if (o.percentile) lt.insert("percentile", *o.percentile);
    layers.push_back(std::move(lt));
  }
  if (!layers.empty()) t.insert("layer", std::move(layers));
  return t;
}

}  // namespace

std::string config_to_toml(const Config& c) {
  auto flts = [](const std::vector<float>& v) {
    toml::array a;
    for (float x : v) a.push_back(static_cast<double>(x));
    return a;
  };
  toml::table t{
      {"experiment", toml::table{{"name", c.name}, {"kind", c.kind}}},
      {"model", toml::table{{"path", c.model_path}}},
      {"data", [&] {
         toml::table d{{"dataset", c.dataset},
                       {"path", c.data_path},
                       {"mean", flts(c.mean)},
                       {"std", flts(c.std)},
                       {"calibration", toml::table{{"split", c.calibration_split}, {"count", c.calibration_count}}},
                       {"eval", toml::table{{"split", c.eval_split}, {"count", c.eval_count}}}};
         // Every key, those that apply only to image folders or shuffled orders too.
         d["calibration"].as_table()->insert("order", c.calibration_order);
         d["eval"].as_table()->insert("order", c.eval_order);
         d.insert("seed", static_cast<int64_t>(c.data_seed));
         d.insert("resize", c.resize);
         d.insert("crop", c.crop);
         return d;
       }()},
      {"quant", quant_table(c.quant)},
      {"additivity", toml::table{{"configs", c.additivity_configs},
                                 {"low_bits", c.low_bits},
                                 {"high_bits", c.high_bits},
                                 {"seed", static_cast<int64_t>(c.additivity_seed)}}},
      {"stats", toml::table{{"bootstrap", c.bootstrap}, {"seed", static_cast<int64_t>(c.stats_seed)}, {"confidence", c.confidence}}},
      {"run", [&] {
         toml::table r{{"backend", c.backend}, {"threads", c.threads}, {"naive", c.naive}, {"tf32", c.tf32},
                       {"conv_transforms", c.conv_transforms}};
         if (c.batch_size == 0) {
           r.insert("batch_size", "auto");
         } else {
           r.insert("batch_size", c.batch_size);
         }
         if (c.devices.empty()) {
           r.insert("devices", "all");
         } else {
           r.insert("devices", int_array(c.devices));
         }
         return r;
       }()},
      {"output", toml::table{{"root", c.root},
                             {"worst", c.worst},
                             {"plots", c.plots},
                             {"saturate", c.saturate},
                             {"bar_bits", c.bar_bits}}},
  };
  if (!c.variants.empty()) {
    toml::array vs;
    for (const auto& v : c.variants) {
      // Each variant is written whole (its quant as resolved), so it reloads the same.
      vs.push_back(toml::table{{"name", v.name}, {"description", v.description}, {"quant", quant_table(v.quant)}});
    }
    t.insert("variant", std::move(vs));
  }
  std::ostringstream os;
  os << "# The configuration as run (defaults filled in, overrides applied).\n" << t << "\n";
  return os.str();
}

std::string config_identity(const Config& c, bool any_batch_size) {
  Config id = c;
  const Config defaults;
  id.root = defaults.root;
  id.worst = defaults.worst;
  id.plots = defaults.plots;
  id.saturate = defaults.saturate;
  id.bar_bits = defaults.bar_bits;
  if (any_batch_size) id.batch_size = 0;
  return config_to_toml(id);
}

std::string config_identity_of_file(const std::string& path, bool any_batch_size) {
  try {
    return config_identity(load_config(path, {}), any_batch_size);
  } catch (const UserError&) {
    return "unreadable: " + path;  // matches no configuration
  }
}

std::string config_keys_markdown() {
  std::string s = "| key | type | default | meaning |\n|---|---|---|---|\n";
  for (const auto& k : config_keys()) s += fmt::format("| `{}` | {} | `{}` | {} |\n", k.path, k.type, k.default_value, k.doc);
  return s;
}

}  // namespace qsweep
