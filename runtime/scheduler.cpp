#include "runtime/scheduler.h"

#include <algorithm>
#include <numeric>

namespace qsweep {

std::vector<double> node_costs(const Executor& exec, const Tensor& sample) {
  const Graph& g = exec.graph();
  auto ws = exec.make_workspace();
  exec.forward(ws, sample);
  std::vector<double> cost(g.nodes.size(), 0.0);
  for (size_t k = 0; k < g.nodes.size(); ++k) {
    const Node& n = g.nodes[k];
    const Tensor& out = ws.values[n.output];
    const double outputs = static_cast<double>(out.numel());
    if (n.op == OpType::kConv) {
      const Tensor& w = g.constant(n.inputs[1]);
      cost[k] = outputs * static_cast<double>(w.numel() / w.dim(0));  // (Cin/g) * kh * kw per output
    } else if (n.op == OpType::kGemm || n.op == OpType::kMatMul) {
      const Tensor& x = ws.values[n.inputs[0]];
      cost[k] = outputs * static_cast<double>(x.shape.back());
    } else {
      cost[k] = outputs;
    }
  }
  return cost;
}

double forward_cost(const std::vector<double>& node_cost) {
  return std::accumulate(node_cost.begin(), node_cost.end(), 0.0);
}

double suffix_cost(const Executor& exec, const std::vector<double>& node_cost, int layer) {
  double c = 0.0;
  for (int k : exec.suffix(layer)) c += node_cost[k];
  return c;
}

ShardPlan plan_shards(const std::vector<double>& cell_cost, double float_cost, int64_t batches, int64_t batch_size,
                      int64_t images, int shards) {
  ShardPlan p;
  p.shards = shards;
  p.batches = batches;
  const int cells = static_cast<int>(cell_cost.size());
  // Enough units for LPT to balance: about four per shard, cells first, then data chunks.
  int64_t chunks = 1;
  while (chunks < batches && static_cast<int64_t>(cells) * chunks < 4LL * shards) ++chunks;
  for (int64_t c = 0; c < chunks; ++c) p.chunk_begin.push_back(c * batches / chunks);
  auto chunk_images = [&](int c) {
    const int64_t b0 = p.chunk_begin[c], b1 = c + 1 < chunks ? p.chunk_begin[c + 1] : batches;
    return static_cast<double>(std::min(images, b1 * batch_size) - b0 * batch_size);
  };
  struct Candidate {
    WorkUnit u;
    double cost;
  };
  std::vector<Candidate> all;
  for (int cell = 0; cell < cells; ++cell) {
    for (int c = 0; c < chunks; ++c) all.push_back({{cell, c}, cell_cost[cell] * chunk_images(c)});
  }
  std::stable_sort(all.begin(), all.end(), [](const Candidate& a, const Candidate& b) { return a.cost > b.cost; });
  p.units.assign(shards, {});
  p.cost.assign(shards, 0.0);
  std::vector<std::vector<char>> touches(shards, std::vector<char>(chunks, 0));
  for (const Candidate& cand : all) {
    int best = 0;
    double best_load = 0.0;
    for (int s = 0; s < shards; ++s) {
      const double load = p.cost[s] + cand.cost + (touches[s][cand.u.chunk] ? 0.0 : float_cost * chunk_images(cand.u.chunk));
      if (s == 0 || load < best_load) {
        best = s;
        best_load = load;
      }
    }
    p.cost[best] = best_load;
    touches[best][cand.u.chunk] = 1;
    p.units[best].push_back(cand.u);
  }
  for (auto& u : p.units) {
    std::sort(u.begin(), u.end(), [](const WorkUnit& a, const WorkUnit& b) {
      return a.chunk != b.chunk ? a.chunk < b.chunk : a.cell < b.cell;
    });
  }
  return p;
}

std::vector<std::vector<int>> cells_by_batch(const ShardPlan& plan, int shard) {
  std::vector<std::vector<int>> out(plan.batches);
  const int64_t chunks = static_cast<int64_t>(plan.chunk_begin.size());
  for (const WorkUnit& u : plan.units[shard]) {
    const int64_t b0 = plan.chunk_begin[u.chunk];
    const int64_t b1 = u.chunk + 1 < chunks ? plan.chunk_begin[u.chunk + 1] : plan.batches;
    for (int64_t b = b0; b < b1; ++b) out[b].push_back(u.cell);
  }
  for (auto& v : out) std::sort(v.begin(), v.end());
  return out;
}

}  // namespace qsweep
