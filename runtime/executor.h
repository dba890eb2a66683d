// Runs a graph on a backend: the float32 forward, forwards with some layers quantized,
// and the suffix forward that restarts from one layer's cached input (method.md,
// "Performance contract").
#pragma once

#include <memory>
#include <vector>

#include "runtime/backend.h"
#include "runtime/graph.h"

namespace qsweep {

// How one layer is quantized in a forward (method.md, "Quantizing one layer j").
// How a layer's fake-quantized weights were made, when a device backend may remake them from
// the float32 weights it already holds: min/max ranges (per tensor, or per output channel),
// then fake-quant at `bits` under `scheme`. bits = 0: no recipe (another clipping method,
// or weights from elsewhere); only LayerQuantization::weights describes them.
struct WeightRecipe {
  int bits = 0;
  Scheme scheme = Scheme::kAsymmetric;
  bool per_channel = false;
};

struct LayerQuantization {
  const Tensor* weights = nullptr;  // fake-quantized weights (same shape as the layer's)
  WeightRecipe recipe;              // when set, equal to what made `weights`, bit for bit
  const Tensor* bias = nullptr;     // replaces the layer's bias when set (bias correction)
  bool quantize_input = true;
  QuantParams input;
  bool quantize_output = true;
  QuantParams output;
};

// One entry per layer; nullptr leaves the layer in float32.
using QuantPlan = std::vector<const LayerQuantization*>;

class Executor {
 public:
  Executor(const Graph& graph, const Backend& backend);

  // Per-thread buffers: every value of the last forward, plus the suffix's own values.
  struct Workspace {
    std::unique_ptr<BackendContext> ctx;
    std::vector<Tensor> values;   // indexed by value id; a float forward fills every one
    std::vector<Tensor> scratch;  // values recomputed by a suffix forward
    Tensor quantized_input;       // the fake-quantized input of the quantized layer
    Tensor output_nchw;           // the network output, when its last op left it NHWC
    std::vector<const Tensor*> args;
    // quantized_input is reused while the float values it came from are unchanged: the
    // grid's cells of one layer (one per weight bit-width) share it on every batch.
    uint64_t generation = 0;  // bumped by every forward
    int qin_layer = -1;
    uint64_t qin_generation = 0;
    QuantParams qin_params;
    // Every value, conv outputs included, even where the backend computes a conv and its
    // activation in one call (which leaves the conv's own output unset): for readers of
    // pre-activation values (calibration, bias correction).
    bool keep_all_values = false;
    std::vector<uint64_t> fused;  // per node: the pass that already computed it (fused into its conv)
    uint64_t pass = 0;
  };
  Workspace make_workspace() const;

  // Runs every node on `input` (N, C, H, W). With a plan, the planned layers are
  // quantized; without one this is the float32 network. ws.values holds every value after.
  const Tensor& forward(Workspace& ws, const Tensor& input, const QuantPlan* plan = nullptr) const;

  // With ws.values holding a float32 forward of a batch, recomputes only the nodes that
  // depend on layer j, with layer j quantized by q; returns the network output.
  const Tensor& suffix_forward(Workspace& ws, int layer, const LayerQuantization& q) const;

  // With ws.values holding a float32 forward, runs only layer j's Conv/Gemm node on its
  // (fake-quantized) input with q's weights: the quantized pre-activation output.
  const Tensor& layer_node_output(Workspace& ws, int layer, const LayerQuantization& q) const;

  const Graph& graph() const { return graph_; }
  const Backend& backend() const { return backend_; }
  const std::vector<int>& suffix(int layer) const { return suffixes_[layer]; }

 private:
  // Runs node k reading inputs through `read` and quantizing per its layer role.
  // With `act` (the activation that alone consumes conv node k's output), both run as one
  // backend call into `out`, the activation's value.
  template <typename Read>
  void run_node(Workspace& ws, int k, const LayerQuantization* q, Read read, Tensor& out,
                const Node* act = nullptr) const;
  // Runs node k of a forward or suffix pass over `slots`, fused with its activation when the
  // backend can (marking the activation done for this pass); skips nodes already done.
  template <typename Read>
  void pass_node(Workspace& ws, int k, const LayerQuantization* q, Read read, std::vector<Tensor>& slots) const;

  const Graph& graph_;
  const Backend& backend_;
  std::vector<std::vector<int>> suffixes_;
  std::vector<std::vector<char>> dirty_;  // per layer: value recomputed by its suffix
  // Per node: the layer whose Conv/Gemm it is, or -1; the layer whose fused activation it
  // is, or -1.
  std::vector<int> layer_of_node_, layer_of_act_;
  std::vector<int> fused_act_;  // per node (a Conv or an Add): the activation the backend runs with it, or -1
  // Per Conv node: the residual join (Add, its activation, the Add's other operand) a suffix
  // forward runs in the same backend call, or add = -1. Only suffixes fuse it: the float32
  // forward keeps the conv's output, which a suffix starting in the other branch reads.
  struct ResidualJoin {
    int add = -1, act = -1, other = -1;
  };
  std::vector<ResidualJoin> residual_;
};

}  // namespace qsweep
