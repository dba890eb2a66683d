// Work units, a cost model and sharding for grids (layers x bit-widths x methods) over an
// evaluation set. Metrics are sums over images, so partial results merge exactly.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/executor.h"

namespace qsweep {

// Per-image cost of every node (multiply-accumulates for Conv/Gemm/MatMul, one per output
// element for everything else), measured from a forward of `sample` (a batch of 1).
std::vector<double> node_costs(const Executor& exec, const Tensor& sample);

// Per-image cost of the float32 forward and of each layer's suffix (what one grid cell of
// that layer recomputes).
double forward_cost(const std::vector<double>& node_cost);
double suffix_cost(const Executor& exec, const std::vector<double>& node_cost, int layer);

// A unit of work: one cell over one contiguous range of batches (a chunk).
struct WorkUnit {
  int cell = 0;
  int chunk = 0;
};

struct ShardPlan {
  int shards = 1;
  std::vector<int64_t> chunk_begin;  // first batch of each chunk; chunk c ends where c + 1 begins
  int64_t batches = 0;
  std::vector<std::vector<WorkUnit>> units;  // per shard
  std::vector<double> cost;                  // per shard, in cost units
};

// Splits `cell_cost.size()` cells over `batches` batches of `batch_size` images into
// `shards` shards, balancing estimated cost (largest unit first onto the least loaded
// shard; a shard also pays the float32 forward of every chunk it touches). The data are
// split into chunks only when there are more shards than cells can balance. Deterministic:
// every shard computes the same plan from the same inputs.
ShardPlan plan_shards(const std::vector<double>& cell_cost, double float_cost, int64_t batches, int64_t batch_size,
                      int64_t images, int shards);

// Which cells shard `shard` computes on each batch (empty: none).
std::vector<std::vector<int>> cells_by_batch(const ShardPlan& plan, int shard);

}  // namespace qsweep
