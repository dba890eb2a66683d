// The run configuration: TOML (TOML++), every key documented in configs/README.md.
#pragma once

#include <string>
#include <vector>

#include "kernels/cpu/fake_quant.h"

namespace toml {
inline namespace v3 {
class table;
}
}  // namespace toml

namespace qsweep {

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
  std::string calibration_split = "train";
  int64_t calibration_count = 512;
  std::string eval_split = "test";
  int64_t eval_count = 0;  // 0: the whole split
  // [quant]
  std::vector<int> weight_bits{3, 4, 5, 6, 7, 8};
  int act_bits = 8;
  Scheme scheme = Scheme::kAsymmetric;
  Granularity granularity = Granularity::kPerTensor;
  bool quantize_input = true;
  bool quantize_output = true;
  // [run]
  std::string backend = "auto";
  int64_t batch_size = 250;
  int threads = 0;  // 0: every core
  bool naive = false;
  // [output]
  std::string root = "results";
  int worst = 3;

  std::string source;  // the file it came from ("built-in default" when none)
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

// The effective configuration (every key, defaults filled in) as TOML text.
std::string config_to_toml(const Config& c);

// configs/README.md's key table, generated from config_keys().
std::string config_keys_markdown();

std::string scheme_name(Scheme s);
std::string granularity_name(Granularity g);

}  // namespace qsweep
