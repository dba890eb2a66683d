// qsweep: batch experiment runner for layer-wise quantization analysis.
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "experiments/config.h"
#include "experiments/run.h"
#include "qsweep_version.h"
#include "runtime/error.h"
#include "runtime/onnx_import.h"

namespace {

std::string join_args(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.find_first_of(" \"'$") != std::string::npos) a = "'" + a + "'";
    s += (i ? " " : "") + a;
  }
  return s;
}

int list_layers(const std::string& model) {
  const qsweep::Graph g = qsweep::import_onnx(model);
  fmt::print("{} layers in {} (opset {}, {} nodes after BatchNormalization folding)\n", g.layers.size(), model, g.opset,
             g.nodes.size());
  fmt::print("{:>5}  {:<40} {:<7} {:<12} {}\n", "index", "name", "op", "activation", "weight shape");
  for (const auto& L : g.layers) {
    fmt::print("{:>5}  {:<40} {:<7} {:<12} {}\n", L.index, L.name, qsweep::op_name(g.nodes[L.node].op),
               L.act_node >= 0 ? std::string(qsweep::op_name(g.nodes[L.act_node].op)) : "-",
               qsweep::shape_str(g.constant(L.weight_value).shape));
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"qsweep: layer-wise quantization analysis of ONNX networks"};
  app.set_version_flag("--version", std::string("qsweep ") + QSWEEP_VERSION + " (" + QSWEEP_GIT_COMMIT + ")");
  app.require_subcommand(1);

  qsweep::RunOptions run;
  auto* run_cmd = app.add_subcommand("run", "Run the experiment a TOML config describes and write a results folder");
  run_cmd->add_option("config", run.config_path, "TOML config (see configs/README.md)")->required();
  run_cmd->add_option("--set", run.overrides, "Override a config key: KEY=VALUE, VALUE in TOML syntax "
                                              "(--set quant.act_bits=6, --set 'model.path=\"m.onnx\"')")
      ->type_name("KEY=VALUE");
  run_cmd->add_option("--out", run.out_root, "Results root folder (overrides output.root)");
  run_cmd->add_option("--backend", run.backend, "cpu, cuda or auto (overrides run.backend)");
  run_cmd->add_flag("--naive", run.naive, "Run the grid the slow way (full forward per cell), for comparison");
  run_cmd->add_flag("--quiet,-q", run.quiet, "No progress or summary output");

  std::string model;
  auto* layers_cmd = app.add_subcommand("layers", "List the layers qsweep finds in an ONNX model");
  layers_cmd->add_option("model", model, "ONNX file")->required();

  auto* keys_cmd = app.add_subcommand("keys", "Print every config key with its default (Markdown)");

  CLI11_PARSE(app, argc, argv);
  run.command_line = join_args(argc, argv);
  try {
    if (*run_cmd) {
      qsweep::run_experiment(run);
    } else if (*layers_cmd) {
      return list_layers(model);
    } else if (*keys_cmd) {
      fmt::print("{}", qsweep::config_keys_markdown());
    }
  } catch (const qsweep::UserError& e) {
    fmt::print(stderr, "qsweep: error: {}\n", e.what());
    return 2;
  } catch (const std::exception& e) {
    fmt::print(stderr, "qsweep: internal error: {}\n", e.what());
    return 1;
  }
  return 0;
}
