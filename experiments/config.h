// The run configuration: TOML (TOML++), every key documented in configs/README.md.
#pragma once

#include <cstdint>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include "kernels/cpu/fake_quant.h"

namespace toml {
inline namespace v3 {
class table;
}
}  // namespace toml

namespace qsweep {

enum class ClipMethod { kMinMax, kSawb, kMse, kPercentile };

// How one layer is quantized (method.md): every field can be set globally in [quant] and
// overridden for chosen layers in [[quant.layer]].
struct QuantSpec {
  int weight_bits = 8;  // kind = "full" / variants; the grid's columns replace it
  int act_bits = 8;
  Scheme scheme = Scheme::kAsymmetric;
  Granularity granularity = Granularity::kPerTensor;
  ClipMethod clip = ClipMethod::kMinMax;
  double percentile = 99.99;
  int mse_grid = 100;
  bool quantize_input = true;
  bool quantize_output = true;
};

// A [[quant.layer]] table: selectors plus the fields it sets.
struct LayerOverride {
  // Each selector: a layer index (an integer), an exact layer name, or a glob pattern
  // (* ? [..]) over names. A string is a layer's exact name where one has it, else (all
  // digits) an index, else a pattern; `is_index[i]` (where present) marks an integer.
  std::vector<std::string> selectors;
  std::vector<char> is_index;
  std::optional<int> weight_bits, act_bits;
  std::optional<Scheme> scheme;
  std::optional<Granularity> granularity;
  std::optional<ClipMethod> clip;
  std::optional<double> percentile;
  std::string where;  // file:line for messages
};

struct QuantConfig {
  std::vector<int> weight_bits{3, 4, 5, 6, 7, 8};  // the grid's columns
  QuantSpec base;
  std::vector<LayerOverride> layers;
  bool equalization = false;    // cross-layer equalization of Conv->ReLU->Conv pairs
  bool bias_correction = false;  // empirical bias correction from calibration data
};

// One row of a comparison (kind = "full"): the base [quant] with this variant's changes.
struct Variant {
  std::string name, description;
  QuantConfig quant;
};

struct Config {
  // [experiment]
  std::string name = "quickstart";
  std::string kind = "layerwise";
  // [model]
  std::string model_path;
  // [data]
  std::string dataset = "fashion-mnist";
  std::string data_path;  // default: the Debian package's folder
  std::vector<float> mean{0.2860f};
  std::vector<float> std{0.3530f};
  int resize = 0;  // image folders: Resize(resize) of the shorter side; 0: none
  int crop = 0;    // image folders: CenterCrop(crop); 0: none
  std::string calibration_split = "train";
  int64_t calibration_count = 512;
  std::string eval_split = "test";
  int64_t eval_count = 0;  // 0: the whole split
  std::string calibration_order = "file";  // "file", "interleaved", "shuffled" (runtime/data.h)
  std::string eval_order = "file";
  uint64_t data_seed = 0;  // of "shuffled" orders
  // [quant], [[quant.layer]]
  QuantConfig quant;
  // [[variant]]
  std::vector<Variant> variants;
  // [additivity]
  int additivity_configs = 20;
  int low_bits = 4;
  int high_bits = 8;  // 0: the other layers stay float32
  uint64_t additivity_seed = 1;
  // [stats]
  int bootstrap = 1000;
  uint64_t stats_seed = 0;
  double confidence = 0.95;
  // [run]
  std::string backend = "auto";
  int64_t batch_size = 250;  // 0: "auto" (from free device memory; cpu_auto_batch_size() on the CPU)
  int threads = 0;  // 0: every core
  bool tf32 = false;  // run.tf32: the CUDA backend may use TF32 tensor cores
  bool conv_transforms = false;  // run.conv_transforms: FFT / Winograd convolutions (cuDNN; CPU Winograd)
  bool naive = false;
  std::vector<int> devices;  // run.devices: empty = "all"
  // [output]
  std::string root = "results";
  int worst = 3;
  bool plots = true;      // figures (gnuplot) and report.html
  double saturate = 5.0;  // the degradation heatmap's colour scale saturates here (points)
  int bar_bits = 0;       // bit-width of the per-layer bars; 0: the lowest of the grid

  std::string source;  // the file it came from
};

// One documented key: dotted path, TOML type, default as written in TOML, description.
struct ConfigKey {
  const char* path;
  const char* type;
  const char* default_value;
  const char* doc;
};
const std::vector<ConfigKey>& config_keys();

// Loads `path` (empty: the built-in default) and applies `overrides` ("a.b=VALUE", VALUE in
// TOML syntax). Relative input paths in the file are resolved against the file's folder,
// those given by --set against the working directory. Throws UserError with file:line:column.
Config load_config(const std::string& path, const std::vector<std::string>& overrides);

// A --set override split into its key (spaces around it dropped, as a TOML file allows them:
// 'data.eval.count = 500') and its value text; nothing where it has no '='.
std::optional<std::pair<std::string, std::string>> split_set(const std::string& override);

// The effective configuration (every key, defaults filled in) as TOML text.
std::string config_to_toml(const Config& c);

// What identifies a run: config_to_toml() of the config with its [output] keys at their
// defaults (where results go and how figures look change no number), and with run.batch_size
// "auto" where the run asked for that (its config.toml holds the size chosen, which may
// differ between attempts; each batch record is checked against the size in use). The second
// form reads a run folder's config.toml (written by any qsweep version: keys it lacks take
// their defaults).
std::string config_identity(const Config& c, bool any_batch_size = false);
std::string config_identity_of_file(const std::string& config_toml_path, bool any_batch_size = false);

// configs/README.md's key table, generated from config_keys().
std::string config_keys_markdown();

std::string scheme_name(Scheme s);
std::string granularity_name(Granularity g);
std::string clip_name(ClipMethod c);

}  // namespace qsweep
