// ONNX import into the graph IR (runtime/graph.h).
#pragma once

#include <string>

#include "runtime/graph.h"

namespace qsweep {

struct ImportOptions {
  bool fold_batch_norm = true;  // method.md: folded before anything else happens
};

// Loads, checks (onnx::checker) and shape-infers an ONNX file, converts it, folds
// BatchNormalization into preceding Convs and enumerates the layers. Throws UserError
// with one sentence naming the file and node for anything it cannot run.
Graph import_onnx(const std::string& path, const ImportOptions& options = {});

// Same, from serialized bytes (tests build models in memory); `origin` names it in errors.
Graph import_onnx_bytes(const std::string& bytes, const std::string& origin,
                        const ImportOptions& options = {});

// The op types the importer accepts, comma-separated, for error messages and docs.
std::string supported_onnx_ops();

}  // namespace qsweep
