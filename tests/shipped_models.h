// The trained models shipped in models/, with what their model cards promise.
#pragma once

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace qsweep::testing {

struct ShippedModel {
  std::string name;
  std::string onnx;    // absolute path
  std::string golden;  // raw float32 logits of the first golden_count test images
  nlohmann::json card;
};

inline std::vector<ShippedModel> shipped_models() {
  std::vector<ShippedModel> out;
  const std::string dir = std::string(QSWEEP_SOURCE_DIR) + "/models";
  for (const char* name : {"qsweep_resnet", "qsweep_mobilenetv2"}) {
    ShippedModel m;
    m.name = name;
    std::ifstream in(dir + "/" + name + ".json");
    if (!in) continue;
    m.card = nlohmann::json::parse(in);
    m.onnx = dir + "/" + m.card["onnx"].get<std::string>();
    m.golden = dir + "/" + m.card["golden"].get<std::string>();
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace qsweep::testing
