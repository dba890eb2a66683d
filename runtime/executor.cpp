#include "runtime/executor.h"

#include <algorithm>
#include <new>

#include <oneapi/dnnl/dnnl.hpp>

#include "runtime/error.h"

namespace qsweep {

namespace {

// Runs one node's computation; what a model's sizes or attributes can provoke in the
// libraries (an allocation that fails, oneDNN refusing a primitive) becomes a sentence that
// names the node.
template <typename F>
void compute_node(const Node& node, const Tensor& input, F&& f) {
  const int64_t batch = input.rank() ? input.shape[0] : 1;
  try {
    f();
  } catch (const std::bad_alloc&) {
    user_error("node '{}' ({}) ran out of memory on a batch of {} image(s): its output is too large (check the "
               "model's pads, strides and kernel sizes, or lower run.batch_size)",
               node.name, op_name(node.op), batch);
  } catch (const dnnl::error& e) {
    user_error("node '{}' ({}) cannot be computed with its attributes (oneDNN: {}); check its pads, strides, "
               "dilations and kernel size", node.name, op_name(node.op), e.what());
  }
}

}  // namespace

Executor::Executor(const Graph& graph, const Backend& backend) : graph_(graph), backend_(backend) {
  for (const Node& n : graph.nodes) {
    if (!backend.supports(n.op)) {
      user_error("the {} backend cannot run node '{}' ({})", backend.name(), n.name, op_name(n.op));
    }
  }
  layer_of_node_.assign(graph.nodes.size(), -1);
  layer_of_act_.assign(graph.nodes.size(), -1);
  fused_act_.assign(graph.nodes.size(), -1);
  // Outside layers: a residual Add + ReLU. A suffix that runs the activation runs the Add
  // too (its only input), so the sum need never be kept.
  const auto consumers = graph.consumers();
  for (size_t k = 0; k < graph.nodes.size(); ++k) {
    const int a = graph.residual_activation_of(static_cast<int>(k), consumers);
    if (a >= 0 && backend.fuses_activation(OpType::kAdd, graph.nodes[a].op)) fused_act_[k] = a;
  }
  for (const Layer& L : graph.layers) {
    if (L.act_node >= 0 && backend.fuses_activation(graph.nodes[L.node].op, graph.nodes[L.act_node].op)) {
      fused_act_[L.node] = L.act_node;
    }
  }
  // Conv -> Add -> Relu/Clip: the join is fused into whichever operand's producer runs last,
  // when that is a Conv without an activation of its own whose output only the Add reads
  // (the other operand is then computed by the time a suffix reaches the conv).
  residual_.assign(graph.nodes.size(), ResidualJoin{});
  std::vector<int> producer(graph.values.size(), -1);
  for (size_t k = 0; k < graph.nodes.size(); ++k) producer[graph.nodes[k].output] = static_cast<int>(k);
  for (size_t add = 0; add < graph.nodes.size(); ++add) {
    const Node& a = graph.nodes[add];
    const int act = fused_act_[add];
    if (a.op != OpType::kAdd || act < 0 || !backend.fuses_residual(graph.nodes[act].op)) continue;
    const int last = std::max(producer[a.inputs[0]], producer[a.inputs[1]]);
    if (last < 0) continue;
    const Node& conv = graph.nodes[last];
    if (conv.op != OpType::kConv || fused_act_[last] >= 0 || consumers[conv.output].size() != 1 ||
        a.inputs[0] == a.inputs[1]) {
      continue;
    }
    residual_[last] = {static_cast<int>(add), act, a.inputs[0] == conv.output ? a.inputs[1] : a.inputs[0]};
  }
  for (const Layer& L : graph.layers) {
    layer_of_node_[L.node] = L.index;
    if (L.act_node >= 0) layer_of_act_[L.act_node] = L.index;
    suffixes_.push_back(graph.suffix_nodes(L.index));
    std::vector<char> dirty(graph.values.size(), 0);
    for (int k : suffixes_.back()) dirty[graph.nodes[k].output] = 1;
    dirty_.push_back(std::move(dirty));
  }
}

// Callers read outputs in NCHW order whatever layout the last op chose.
static const Tensor& nchw_output(Executor::Workspace& ws, const Tensor& y) {
  if (!y.nhwc) return y;
  to_nchw(y, ws.output_nchw);
  return ws.output_nchw;
}

Executor::Workspace Executor::make_workspace() const {
  Workspace ws;
  ws.ctx = backend_.make_context();
  ws.values.resize(graph_.values.size());
  ws.scratch.resize(graph_.values.size());
  ws.fused.assign(graph_.nodes.size(), 0);
  return ws;
}

template <typename Read>
void Executor::run_node(Workspace& ws, int k, const LayerQuantization* q, Read read, Tensor& out,
                        const Node* act) const {
  const Node& node = graph_.nodes[k];
  ws.args.clear();
  for (int v : node.inputs) {
    ws.args.push_back(graph_.values[v].is_constant ? &graph_.values[v].constant : &read(v));
  }
  const int layer = layer_of_node_[k];
  if (q != nullptr && layer >= 0) {
    // Step 1: the input is fake-quantized on the path into this layer only.
    if (q->quantize_input) {
      const QuantParams& p = q->input;
      const bool cached = ws.qin_layer == layer && ws.qin_generation == ws.generation &&
                          ws.qin_params.scale == p.scale && ws.qin_params.zero_point == p.zero_point &&
                          ws.qin_params.qmin == p.qmin && ws.qin_params.qmax == p.qmax;
      if (!cached) {
        backend_.fake_quantize(*ws.ctx, *ws.args[0], p, ws.quantized_input);
        ws.qin_layer = layer;
        ws.qin_generation = ws.generation;
        ws.qin_params = p;
      }
      ws.args[0] = &ws.quantized_input;
    }
    // Step 2: fake-quantized weights, computed once per (layer, bits) by the caller.
    if (q->weights != nullptr) ws.args[1] = q->weights;
    if (q->bias != nullptr) {
      if (ws.args.size() > 2) ws.args[2] = q->bias;
      else ws.args.push_back(q->bias);
    }
  }
  compute_node(node, *ws.args[0], [&] {
    if (act != nullptr) {
      backend_.run_with_activation(*ws.ctx, node, *act, ws.args, out);
    } else {
      backend_.run(*ws.ctx, node, ws.args, out);
    }
  });
  // Step 4: the layer's output (after its fused activation, when it has one).
  if (q != nullptr && q->quantize_output) {
    const bool is_output =
        act != nullptr || (layer >= 0 && graph_.layers[layer].act_node < 0) || layer_of_act_[k] >= 0;
    if (is_output) backend_.fake_quantize(*ws.ctx, out, q->output, out);
  }
}

template <typename Read>
void Executor::pass_node(Workspace& ws, int k, const LayerQuantization* q, Read read, std::vector<Tensor>& slots) const {
  if (ws.fused[k] == ws.pass) return;  // computed with its convolution
  const int a = ws.keep_all_values ? -1 : fused_act_[k];
  if (a < 0) return run_node(ws, k, q, read, slots[graph_.nodes[k].output]);
  run_node(ws, k, q, read, slots[graph_.nodes[a].output], &graph_.nodes[a]);
  ws.fused[a] = ws.pass;
}

const Tensor& Executor::forward(Workspace& ws, const Tensor& input, const QuantPlan* plan) const {
  ++ws.generation;  // every value may change
  ++ws.pass;
  ws.values[graph_.input] = input;
  auto read = [&](int v) -> const Tensor& { return ws.values[v]; };
  for (size_t k = 0; k < graph_.nodes.size(); ++k) {
    int layer = layer_of_node_[k] >= 0 ? layer_of_node_[k] : layer_of_act_[k];
    const LayerQuantization* q = (plan && layer >= 0) ? (*plan)[layer] : nullptr;
    pass_node(ws, static_cast<int>(k), q, read, ws.values);
  }
  return nchw_output(ws, ws.values[graph_.output]);
}

const Tensor& Executor::layer_node_output(Workspace& ws, int layer, const LayerQuantization& q) const {
  LayerQuantization no_output = q;
  no_output.quantize_output = false;
  const int k = graph_.layers[layer].node;
  auto read = [&](int v) -> const Tensor& { return ws.values[v]; };
  run_node(ws, k, &no_output, read, ws.scratch[graph_.nodes[k].output]);
  return ws.scratch[graph_.nodes[k].output];
}

const Tensor& Executor::suffix_forward(Workspace& ws, int layer, const LayerQuantization& q) const {
  const std::vector<char>& dirty = dirty_[layer];
  auto read = [&](int v) -> const Tensor& { return dirty[v] ? ws.scratch[v] : ws.values[v]; };
  ++ws.pass;
  for (int k : suffixes_[layer]) {
    const bool mine = layer_of_node_[k] == layer || layer_of_act_[k] == layer;
    const ResidualJoin& r = residual_[k];
    if (!mine && r.add >= 0 && !ws.keep_all_values) {  // conv + residual Add + activation in one call
      const Node& conv = graph_.nodes[k];
      ws.args.clear();
      for (int v : conv.inputs) ws.args.push_back(graph_.values[v].is_constant ? &graph_.values[v].constant : &read(v));
      compute_node(conv, *ws.args[0], [&] {
        backend_.run_conv_residual(*ws.ctx, conv, graph_.nodes[r.add], graph_.nodes[r.act], ws.args, read(r.other),
                                   ws.scratch[graph_.nodes[r.act].output]);
      });
      ws.fused[r.add] = ws.fused[r.act] = ws.pass;
      continue;
    }
    pass_node(ws, k, mine ? &q : nullptr, read, ws.scratch);
  }
  return nchw_output(ws, dirty[graph_.output] ? ws.scratch[graph_.output] : ws.values[graph_.output]);
}

}  // namespace qsweep
