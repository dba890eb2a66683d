#include "experiments/layerwise.h"

#include <filesystem>
#include <fstream>

#include <chrono>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <cmath>
#include <limits>

#include <omp.h>

#include "experiments/batches.h"
#include "experiments/progress.h"
#include "kernels/cpu/metrics.h"
#include "runtime/error.h"

namespace qsweep {

double GridResult::sqnr_db(const CellStats& c) const {
  if (c.noise_sum == 0.0) return std::numeric_limits<double>::infinity();
  return 10.0 * std::log10(output_energy / c.noise_sum);
}

namespace {

// Per-batch partial sums, merged in batch order so results do not depend on threads.
struct BatchSums {
  int64_t float_correct = 0;
  double energy = 0.0;
  std::vector<double> noise;
  std::vector<int64_t> correct;
};

// The outcome bits (top-1, top-5; kernels/cpu/metrics.h) per image of a batch into `flags`,
// and the top-1 count.
int64_t record_top1(const Tensor& y, const int32_t* labels, int64_t n, uint8_t* flags) {
  const size_t k = static_cast<size_t>(y.numel() / n);
  int64_t correct = 0;
  for (int64_t i = 0; i < n; ++i) {
    flags[i] = row_outcome(y.ptr() + i * k, k, labels[i]);
    correct += (flags[i] & kTop1Bit) != 0;
  }
  return correct;
}

GridResult collect(const std::vector<BatchSums>& sums, std::vector<CellStats> cells, std::vector<uint8_t> float_images,
                   int64_t count) {
  GridResult r;
  r.images = count;
  r.float_correct_images = std::move(float_images);
  r.cells = std::move(cells);
  for (const BatchSums& s : sums) {  // batch order
    r.float_correct += s.float_correct;
    r.output_energy += s.energy;
    for (size_t c = 0; c < r.cells.size(); ++c) {
      r.cells[c].noise_sum += s.noise[c];
      r.cells[c].correct += s.correct[c];
    }
  }
  return r;
}

// The float32 network's output on a batch must be finite (its squared norm is): NaN or
// infinite logits (calibration saw finite ones) would make the cells' numbers NaN, found
// only when the grid is done.
void require_finite_output(double energy, int64_t begin, int64_t n) {
  if (!std::isfinite(energy)) {
    user_error("the float32 network's output is not finite (NaN or infinite) on evaluation images {}..{}; qsweep "
               "needs a finite float32 network (check the model's weights and data.mean / data.std)",
               begin, begin + n - 1);
  }
}

std::vector<BatchSums> make_sums(int64_t batches, size_t cells) {
  std::vector<BatchSums> sums(batches);
  for (auto& s : sums) {
    s.noise.assign(cells, 0.0);
    s.correct.assign(cells, 0);
  }
  return sums;
}

}  // namespace

std::vector<std::unique_ptr<QuantizedLayer>> quantize_layers(const Executor& exec,
                                                             std::span<const std::pair<int, int>> layer_bits,
                                                             const std::vector<QuantSpec>& specs,
                                                             const ActivationRanges& ranges,
                                                             const BiasCorrectionSource* bc, int64_t batch_size,
                                                             int threads, const std::atomic<bool>* stop) {
  const Graph& g = exec.graph();
  const auto throw_if_stop = [stop] {
    if (stop != nullptr && stop->load()) {
      throw RunInterrupted("interrupted while quantizing the layers, before this attempt computed a batch; run the "
                           "same command again");
    }
  };
  std::vector<std::unique_ptr<QuantizedLayer>> out;
  out.reserve(layer_bits.size());
  for (const auto& [layer, bits] : layer_bits) {
    throw_if_stop();
    const QuantSpec& spec = specs.at(layer);
    auto ql = std::make_unique<QuantizedLayer>();
    ql->layer = layer;
    ql->bits = bits;
    ql->weights = quantize_weights(g, g.layers[layer], spec, bits, stop);
    throw_if_stop();  // an MSE clip search ends early on a stop: its weights are discarded
    ql->q = make_layer_quantization(g.layers[layer], ranges, spec);
    if (spec.clip == ClipMethod::kMinMax) {  // a device session reduces the ranges and quantizes there
      ql->q.recipe = WeightRecipe{bits, spec.scheme, spec.granularity == Granularity::kPerChannel};
    }
    ql->finalize();
    out.push_back(std::move(ql));
  }
  if (bc != nullptr && !out.empty()) {
    std::vector<std::pair<int, const LayerQuantization*>> cells;
    for (const auto& ql : out) cells.emplace_back(ql->layer, &ql->q);
    std::vector<Tensor> biases = bias_corrections(exec, cells, *bc->data, bc->norm, bc->count, batch_size, threads, stop);
    throw_if_stop();
    for (size_t i = 0; i < out.size(); ++i) {
      out[i]->bias = std::move(biases[i]);
      out[i]->corrected_bias = true;
      out[i]->finalize();
    }
  }
  return out;
}

int64_t cpu_auto_batch_size(int64_t images, int threads) {
  const int64_t per_worker = 4 * static_cast<int64_t>(std::max(threads, 1));
  return std::clamp<int64_t>(images / per_worker, 32, 250);  // rounded down: at least 4 per worker
}

void throw_if_stopped(const GridOptions& opt) {
  if (opt.stop != nullptr && opt.stop->load()) {
    throw RunInterrupted(opt.store ? "interrupted: the finished batches are recorded; run the same command again to "
                                     "resume"
                                   : "interrupted: this run keeps no records, so nothing was written (the same "
                                     "command starts over)");
  }
}

// The records of the batches an earlier attempt finished (opt.store), where they hold what
// this grid computes: `cells` of each batch, the batch's first image and image count. Those
// batches are marked done; records[b] holds each.
std::vector<char> load_records(const GridOptions& opt, const std::vector<int>& cells, int64_t count,
                               std::vector<BatchRecord>& records) {
  const int64_t bs = opt.batch_size, batches = static_cast<int64_t>(records.size());
  std::vector<char> done(batches, 0);
  if (!opt.store) return done;
  for (int64_t b = 0; b < batches; ++b) {
    std::optional<BatchRecord> rec = opt.store->load(b);
    if (rec && rec->batch == b && record_fits_batches(*rec, bs, count) && rec->cells == cells) {
      records[b] = std::move(*rec);
      done[b] = 1;
    }
  }
  const auto kept = std::count(done.begin(), done.end(), 1);
  if (opt.progress && kept > 0) {
    std::fprintf(stderr, "resuming: %lld of %lld batches already recorded\n", static_cast<long long>(kept),
                 static_cast<long long>(batches));
  }
  return done;
}

int64_t outputs_per_image(const Executor& exec) {
  const Graph& g = exec.graph();
  // Batches of 2 and 3 images: an output that is not one row of logits per image shows, and so
  // does a constant whose first dimension lines up with the batch (it would broadcast against
  // one batch size only, giving each image the constant of its position in the batch).
  int64_t per_image = 0;
  for (const int64_t n : {2, 3}) {
    auto ws = exec.make_workspace();
    Tensor y;
    try {
      y = exec.forward(ws, Tensor(g.batch_shape(n)));  // zeros
    } catch (const UserError& e) {
      if (n == 2) throw;
      user_error("the model runs on a batch of 2 images but not of {} ({}); each image must be computed on its own, so "
                 "no constant may have a first dimension other than 1 where it meets the batch",
                 n, e.what());
    }
    // (N, classes), or (N, classes, 1, 1) as a model ending in global pooling without Flatten has.
    const bool rows = y.rank() >= 2 && y.shape[0] == n &&
                      std::all_of(y.shape.begin() + 2, y.shape.end(), [](int64_t d) { return d == 1; });
    if (!rows) {
      user_error("the model's output '{}' has shape {} for a batch of {} images; qsweep needs logits of shape (N, "
                 "classes) (or (N, classes, 1, ...)), one row per image", g.values[g.output].name, shape_str(y.shape),
                 n);
    }
    if (per_image != 0 && y.numel() / n != per_image) {
      user_error("the model's output '{}' has {} values per image for a batch of 2 images and {} for 3; qsweep needs "
                 "one row of logits per image", g.values[g.output].name, per_image, y.numel() / n);
    }
    per_image = y.numel() / n;
  }
  return per_image;
}

int64_t cpu_bytes_per_image(const Executor& exec) {
  const Graph& g = exec.graph();
  auto ws = exec.make_workspace();
  ws.keep_all_values = true;
  const Tensor one(g.batch_shape(1));  // zeros
  exec.forward(ws, one);
  int64_t floats = one.numel();
  for (size_t v = 0; v < ws.values.size() && v < g.values.size(); ++v) {
    if (!g.values[v].is_constant) floats += ws.values[v].numel();
  }
  // The kept values, and a suffix's recomputed ones (not all of them at once): 1.5 times the
  // values, from the resident memory of ResNet18 grids at 8 to 64 images per batch (29 MiB
  // per image measured, this estimate 35).
  return floats * static_cast<int64_t>(sizeof(float)) * 3 / 2;
}

int64_t model_bytes(const Graph& g) {
  int64_t floats = 0;
  for (const auto& v : g.values) {
    if (v.is_constant) floats += v.constant.numel();
  }
  return floats * static_cast<int64_t>(sizeof(float));
}

namespace {

// A number from a cgroup file; -1 when absent or "max" (no limit).
int64_t cgroup_number(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::string v;
  if (!(in >> v) || v == "max") return -1;
  char* end = nullptr;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  return end == v.c_str() ? -1 : static_cast<int64_t>(n);
}

// What the memory limits of this process's cgroup and its ancestors leave (cgroup v2, or v1's
// memory controller): SLURM's --mem, a container's limit. -1 where none is set or readable.
int64_t cgroup_memory_left() {
  std::ifstream in("/proc/self/cgroup");
  int64_t left = -1;
  for (std::string line; std::getline(in, line);) {
    const size_t a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = line.substr(a + 1, b - a - 1);
    const bool v2 = controllers.empty();
    if (!v2 && ("," + controllers + ",").find(",memory,") == std::string::npos) continue;
    const std::filesystem::path root = v2 ? "/sys/fs/cgroup" : "/sys/fs/cgroup/memory";
    const char* limit_file = v2 ? "memory.max" : "memory.limit_in_bytes";
    const char* usage_file = v2 ? "memory.current" : "memory.usage_in_bytes";
    for (std::filesystem::path p = line.substr(b + 1);; p = p.parent_path()) {
      const std::filesystem::path dir = root / p.relative_path();
      const int64_t limit = cgroup_number(dir / limit_file), usage = cgroup_number(dir / usage_file);
      if (limit >= 0 && limit < (int64_t{1} << 60) && usage >= 0) {
        const int64_t l = std::max<int64_t>(limit - usage, 0);
        left = left < 0 ? l : std::min(left, l);
      }
      if (!p.has_relative_path()) break;
    }
  }
  return left;
}

}  // namespace

int64_t available_memory_bytes() {
  std::ifstream in("/proc/meminfo");
  std::string key, unit;
  int64_t kib = 0, available = 0;
  while (in >> key >> kib) {
    std::getline(in, unit);
    if (key == "MemAvailable:") {
      available = kib * 1024;
      break;
    }
  }
  const int64_t cgroup = cgroup_memory_left();
  if (cgroup >= 0 && (available == 0 || cgroup < available)) available = std::max<int64_t>(cgroup, 1);
  return available;
}

std::unique_ptr<QuantizedLayer> quantize_layer(const Executor& exec, int layer, const QuantSpec& spec, int bits,
                                               const ActivationRanges& ranges, const BiasCorrectionSource* bc,
                                               int64_t batch_size, int threads) {
  std::vector<QuantSpec> specs(exec.graph().layers.size());
  specs.at(layer) = spec;
  const std::pair<int, int> one[] = {{layer, bits}};
  return std::move(quantize_layers(exec, one, specs, ranges, bc, batch_size, threads)[0]);
}

GridResult run_layerwise_grid(const Executor& exec, const Dataset& eval, const Normalization& norm, int64_t count,
                              const ActivationRanges& ranges, const std::vector<QuantSpec>& specs,
                              const std::vector<int>& weight_bits, const GridOptions& opt,
                              const BiasCorrectionSource* bc) {
  const auto t0 = std::chrono::steady_clock::now();
  const Graph& g = exec.graph();
  const size_t L = g.layers.size(), B = weight_bits.size(), ncells = L * B;
  count = std::min(count, eval.count);
  const int64_t bs = opt.batch_size;
  const int64_t batches = (count + bs - 1) / bs;

  // Weights are quantized once per (layer, bits), never per batch.
  std::vector<std::pair<int, int>> layer_bits(ncells);
  for (size_t c = 0; c < ncells; ++c) layer_bits[c] = {static_cast<int>(c / B), weight_bits[c % B]};
  const std::vector<std::unique_ptr<QuantizedLayer>> quant =
      quantize_layers(exec, layer_bits, specs, ranges, bc, bs, opt.threads, opt.stop);
  std::vector<const LayerQuantization*> cell_quant(ncells);
  for (size_t c = 0; c < ncells; ++c) cell_quant[c] = &quant[c]->q;

  if (!opt.naive) {  // one pass: each batch once through the float network, cells from cached inputs
    GridJob job;
    job.cells_of_batch.assign(batches, std::vector<int>(ncells));
    for (auto& v : job.cells_of_batch) std::iota(v.begin(), v.end(), 0);
    std::vector<BatchRecord> records(batches);
    const std::vector<char> done = load_records(opt, job.cells_of_batch.empty() ? std::vector<int>{} : job.cells_of_batch[0],
                                                count, records);
    job.done = [&](int64_t b) { return done[b] != 0; };
    const auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
    job.sink = [&](BatchRecord&& rec) {
      if (opt.store) {
        opt.store->save(rec);
        if (opt.store->seconds) opt.store->seconds(elapsed());
      }
      records[rec.batch] = std::move(rec);
    };
    job.stop = opt.stop;
    if (!run_grid_batches(exec, eval, norm, count, cell_quant, B, job, opt)) throw_if_stopped(opt);
    GridResult r = assemble_grid(std::move(records), L, weight_bits, count, bs);
    r.seconds = opt.store && opt.store->seconds ? opt.store->seconds(elapsed()) : elapsed();
    return r;
  } else {  // naive: only the per-cell sums a full forward per cell produces
    std::vector<CellStats> cells(ncells);
    for (size_t c = 0; c < ncells; ++c) {
      cells[c].layer = static_cast<int>(c / B);
      cells[c].weight_bits = weight_bits[c % B];
      cells[c].correct_images.assign(count, 0);
    }
    std::vector<uint8_t> float_images(count, 0);
    auto sums = make_sums(batches, ncells);
    // Float32 reference logits first (one pass), then every cell re-decodes and re-runs
    // the whole network on every batch, the way a per-configuration script does.
    Progress progress("grid, naive", count, static_cast<int64_t>(ncells), opt.progress);
    if (auto session = exec.backend().make_session(exec.graph())) {
      // On the device, each cell's whole-network forward runs after a float32 forward of the
      // same batch (the naive way re-runs everything per cell).
      std::vector<QuantPlan> plans(ncells, QuantPlan(L, nullptr));
      std::vector<std::pair<int, const LayerQuantization*>> prep;
      for (size_t c = 0; c < ncells; ++c) {
        plans[c][c / B] = cell_quant[c];
        prep.emplace_back(static_cast<int>(c / B), cell_quant[c]);
      }
      session->prepare(prep);
      for (size_t c = 0; c < ncells; ++c) {
        const DeviceJob job{-1, nullptr, &plans[c]};
        for_each_device_batch(
            *session, eval, norm, count, bs, all_batches(count, bs),
            [&](int64_t) { return std::span<const DeviceJob>(&job, 1); }, false,
            [&](int64_t i, int64_t begin, int64_t n, DeviceOutcome& o) {
              if (c == 0) {
                sums[i].float_correct = o.float_correct;
                sums[i].energy = o.energy;
                require_finite_output(o.energy, begin, n);
                std::copy(o.float_flags.begin(), o.float_flags.end(), float_images.begin() + begin);
              }
              sums[i].noise[c] = o.noise[0];
              sums[i].correct[c] = o.correct[0];
              std::copy(o.flags[0].begin(), o.flags[0].end(), cells[c].correct_images.begin() + begin);
              progress.add_image_cells(n);
            },
            opt.stop);
        throw_if_stopped(opt);
      }
    } else {
      std::vector<Tensor> reference(batches);
      const int32_t* labels = eval.labels.data();
      for_each_batch(exec, eval, norm, count, bs, opt.threads,
                     [&](Executor::Workspace& ws, const Tensor& x, int64_t i, int64_t begin, int64_t n) {
                       throw_if_stopped(opt);
                       reference[i] = exec.forward(ws, x);
                       sums[i].float_correct = record_top1(reference[i], labels + begin, n, float_images.data() + begin);
                       sums[i].energy = squared_norm_sum(reference[i].ptr(), n, reference[i].numel() / n);
                       require_finite_output(sums[i].energy, begin, n);
                     });
      for (size_t c = 0; c < ncells; ++c) {
        QuantPlan plan(L, nullptr);
        plan[c / B] = cell_quant[c];
        for_each_batch(exec, eval, norm, count, bs, opt.threads,
                       [&](Executor::Workspace& ws, const Tensor& x, int64_t i, int64_t begin, int64_t n) {
                         throw_if_stopped(opt);
                         const Tensor& yq = exec.forward(ws, x, &plan);
                         const Tensor& y = reference[i];
                         sums[i].noise[c] = squared_error_sum(y.ptr(), yq.ptr(), n, y.numel() / n);
                         sums[i].correct[c] = record_top1(yq, labels + begin, n, cells[c].correct_images.data() + begin);
                         progress.add_image_cells(n);
                       });
      }
    }
    progress.finish();
    GridResult r = collect(sums, std::move(cells), std::move(float_images), count);
    r.weight_bits = weight_bits;
    r.naive = true;
    r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return r;
  }
}

namespace {

// Little-endian, fixed-width encoding helpers for BatchRecord.
class Writer {
 public:
  template <typename T>
  void put(const T& v) {
    const char* p = reinterpret_cast<const char*>(&v);
    out.append(p, sizeof(T));
  }
  void bytes(const std::vector<uint8_t>& v) {
    put<uint64_t>(v.size());
    out.append(reinterpret_cast<const char*>(v.data()), v.size());
  }
  std::string out;
};

class Reader {
 public:
  explicit Reader(const std::string& s) : s_(s) {}
  template <typename T>
  bool get(T* v) {
    if (pos_ + sizeof(T) > s_.size()) return false;
    std::memcpy(v, s_.data() + pos_, sizeof(T));
    pos_ += sizeof(T);
    return true;
  }
  bool bytes(std::vector<uint8_t>* v, uint64_t max) {
    uint64_t n;
    if (!get(&n) || n > max || pos_ + n > s_.size()) return false;
    v->assign(s_.begin() + pos_, s_.begin() + pos_ + n);
    pos_ += n;
    return true;
  }
  size_t pos() const { return pos_; }

 private:
  const std::string& s_;
  size_t pos_ = 0;
};

uint64_t fnv1a(const char* p, size_t n) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) {
    h ^= static_cast<uint8_t>(p[i]);
    h *= 1099511628211ull;
  }
  return h;
}

// Format 2: per-image flags hold outcome bits (top-1, top-5). Format 1 held top-1 only.
constexpr uint64_t kRecordMagic = 0x3243455253575351ull;  // "QSWSREC2"
constexpr uint64_t kRecordMagicV1 = 0x3143455253575351ull;  // "QSWSREC1"

}  // namespace

std::string encode_record(const BatchRecord& r) {
  Writer w;
  w.put(kRecordMagic);
  w.put(r.batch);
  w.put(r.begin);
  w.put(r.images);
  w.put(r.float_correct);
  w.put(r.energy);
  w.bytes(r.float_flags);
  w.put<uint64_t>(r.cells.size());
  for (size_t i = 0; i < r.cells.size(); ++i) {
    w.put<int32_t>(r.cells[i]);
    w.put(r.noise[i]);
    w.put(r.correct[i]);
    w.bytes(r.flags[i]);
  }
  w.put(fnv1a(w.out.data(), w.out.size()));
  return w.out;
}

bool is_old_record(const std::string& bytes) {
  uint64_t magic = 0;
  if (bytes.size() < 8) return false;
  std::memcpy(&magic, bytes.data(), 8);
  return magic == kRecordMagicV1;
}

std::optional<BatchRecord> decode_record(const std::string& bytes) {
  if (bytes.size() < 16) return std::nullopt;
  uint64_t sum;
  std::memcpy(&sum, bytes.data() + bytes.size() - 8, 8);
  if (sum != fnv1a(bytes.data(), bytes.size() - 8)) return std::nullopt;
  Reader rd(bytes);
  BatchRecord r;
  uint64_t magic, ncells;
  if (!rd.get(&magic) || magic != kRecordMagic) return std::nullopt;
  if (!rd.get(&r.batch) || !rd.get(&r.begin) || !rd.get(&r.images) || !rd.get(&r.float_correct) ||
      !rd.get(&r.energy) || !rd.bytes(&r.float_flags, 1u << 30) || !rd.get(&ncells) || ncells > (1u << 24)) {
    return std::nullopt;
  }
  for (uint64_t i = 0; i < ncells; ++i) {
    int32_t cell;
    double noise;
    int64_t correct;
    std::vector<uint8_t> flags;
    if (!rd.get(&cell) || !rd.get(&noise) || !rd.get(&correct) || !rd.bytes(&flags, 1u << 30)) return std::nullopt;
    r.cells.push_back(cell);
    r.noise.push_back(noise);
    r.correct.push_back(correct);
    r.flags.push_back(std::move(flags));
  }
  if (rd.pos() + 8 != bytes.size()) return std::nullopt;
  return r;
}

bool run_grid_batches(const Executor& exec, const Dataset& eval, const Normalization& norm, int64_t count,
                      const std::vector<const LayerQuantization*>& cell_quant, size_t bits_per_layer,
                      const GridJob& job, const GridOptions& opt) {
  const int64_t bs = opt.batch_size;
  const int64_t batches = static_cast<int64_t>(job.cells_of_batch.size());
  std::vector<int64_t> todo;
  int64_t todo_images = 0, cells_max = 0;
  for (int64_t b = 0; b < batches; ++b) {
    if (job.cells_of_batch[b].empty() || (job.done && job.done(b))) continue;
    todo.push_back(b);
    todo_images += std::min(bs, count - b * bs);
    cells_max = std::max<int64_t>(cells_max, static_cast<int64_t>(job.cells_of_batch[b].size()));
  }
  Progress own("grid", todo_images, cells_max, opt.progress && opt.shared_progress == nullptr);
  Progress& progress = opt.shared_progress ? *opt.shared_progress : own;
  if (auto session = exec.backend().make_session(exec.graph())) {
    // Device-resident: every cell's weights uploaded once, each batch staged while the
    // previous one computes.
    std::vector<std::pair<int, const LayerQuantization*>> prep;
    for (size_t c = 0; c < cell_quant.size(); ++c) {
      if (cell_quant[c]) prep.emplace_back(static_cast<int>(c / bits_per_layer), cell_quant[c]);
    }
    session->prepare(prep);
    std::vector<DeviceJob> jobs;
    const bool finished = for_each_device_batch(
        *session, eval, norm, count, bs, todo,
        [&](int64_t i) {
          jobs.clear();
          for (int c : job.cells_of_batch[i]) jobs.push_back({static_cast<int>(c / bits_per_layer), cell_quant[c], nullptr});
          return std::span<const DeviceJob>(jobs);
        },
        false,
        [&](int64_t i, int64_t begin, int64_t n, DeviceOutcome& o) {
          BatchRecord rec;
          rec.batch = i;
          rec.begin = begin;
          rec.images = n;
          rec.float_flags = std::move(o.float_flags);
          rec.float_correct = o.float_correct;
          rec.energy = o.energy;
          require_finite_output(rec.energy, begin, n);
          const auto& cells = job.cells_of_batch[i];
          for (size_t k = 0; k < cells.size(); ++k) {
            rec.cells.push_back(cells[k]);
            rec.noise.push_back(o.noise[k]);
            rec.correct.push_back(o.correct[k]);
            rec.flags.push_back(std::move(o.flags[k]));
          }
          job.sink(std::move(rec));
          progress.add_images(n);
        },
        job.stop);
    own.finish();
    return finished;
  }
  std::atomic<bool> stopped{false};
  for_each_batch(
      exec, eval, norm, count, bs, opt.threads,
      [&](Executor::Workspace& ws, const Tensor& x, int64_t i, int64_t begin, int64_t n) {
        if (job.stop && job.stop->load()) {
          stopped = true;
          return;
        }
        const int32_t* labels = eval.labels.data() + begin;
        const Tensor& y = exec.forward(ws, x);  // float32, every value kept in ws.values
        const size_t classes = static_cast<size_t>(y.numel() / n);
        BatchRecord rec;
        rec.batch = i;
        rec.begin = begin;
        rec.images = n;
        rec.float_flags.assign(n, 0);
        rec.float_correct = record_top1(y, labels, n, rec.float_flags.data());
        rec.energy = squared_norm_sum(y.ptr(), n, classes);
        require_finite_output(rec.energy, begin, n);
        for (int c : job.cells_of_batch[i]) {
          const Tensor& yq = exec.suffix_forward(ws, static_cast<int>(c / bits_per_layer), *cell_quant[c]);
          rec.cells.push_back(c);
          rec.noise.push_back(squared_error_sum(y.ptr(), yq.ptr(), n, classes));
          rec.flags.emplace_back(n, 0);
          rec.correct.push_back(record_top1(yq, labels, n, rec.flags.back().data()));
        }
        job.sink(std::move(rec));
        progress.add_images(n);
      },
      &todo);
  own.finish();
  return !stopped;
}

GridResult assemble_grid(std::vector<BatchRecord> records, size_t layers, const std::vector<int>& weight_bits,
                         int64_t count, int64_t batch_size) {
  const size_t B = weight_bits.size(), ncells = layers * B;
  const int64_t batches = (count + batch_size - 1) / batch_size;
  std::stable_sort(records.begin(), records.end(),
                   [](const BatchRecord& a, const BatchRecord& b) { return a.batch < b.batch; });
  // Where each (batch, cell) lives.
  std::vector<std::vector<std::pair<int, int>>> at(batches, std::vector<std::pair<int, int>>(ncells, {-1, -1}));
  std::vector<int> float_of(batches, -1);
  for (size_t r = 0; r < records.size(); ++r) {
    const BatchRecord& rec = records[r];
    if (rec.batch < 0 || rec.batch >= batches) throw std::runtime_error("record of a batch outside the grid");
    // Its images as this grid cuts them: records of another batch size do not fit.
    const int64_t begin = rec.batch * batch_size, n = std::min(batch_size, count - begin);
    bool fits = record_fits_batches(rec, batch_size, count) && rec.float_flags.size() == static_cast<size_t>(n) &&
                rec.flags.size() == rec.cells.size() && rec.noise.size() == rec.cells.size() &&
                rec.correct.size() == rec.cells.size();
    for (const auto& f : rec.flags) fits = fits && f.size() == static_cast<size_t>(n);
    if (!fits) {
      throw std::runtime_error("the record of batch " + std::to_string(rec.batch) + " holds images " +
                               std::to_string(rec.begin) + ".." + std::to_string(rec.begin + rec.images - 1) +
                               ", not " + std::to_string(begin) + ".." + std::to_string(begin + n - 1) +
                               " (another batch size)");
    }
    if (float_of[rec.batch] < 0) float_of[rec.batch] = static_cast<int>(r);
    for (size_t k = 0; k < rec.cells.size(); ++k) {
      const int c = rec.cells[k];
      if (c < 0 || static_cast<size_t>(c) >= ncells) throw std::runtime_error("record of a cell outside the grid");
      if (at[rec.batch][c].first >= 0) {
        throw std::runtime_error("cell " + std::to_string(c) + " of batch " + std::to_string(rec.batch) + " recorded twice");
      }
      at[rec.batch][c] = {static_cast<int>(r), static_cast<int>(k)};
    }
  }
  GridResult g;
  g.images = count;
  g.weight_bits = weight_bits;
  g.float_correct_images.assign(count, 0);
  g.cells.resize(ncells);
  for (size_t c = 0; c < ncells; ++c) {
    g.cells[c].layer = static_cast<int>(c / B);
    g.cells[c].weight_bits = weight_bits[c % B];
    g.cells[c].correct_images.assign(count, 0);
  }
  for (int64_t b = 0; b < batches; ++b) {  // batch order, as a single pass adds them
    if (float_of[b] < 0) throw std::runtime_error("batch " + std::to_string(b) + " is missing");
    const BatchRecord& fr = records[float_of[b]];
    g.float_correct += fr.float_correct;
    g.output_energy += fr.energy;
    std::copy(fr.float_flags.begin(), fr.float_flags.end(), g.float_correct_images.begin() + fr.begin);
    for (size_t c = 0; c < ncells; ++c) {
      const auto [r, k] = at[b][c];
      if (r < 0) throw std::runtime_error("cell " + std::to_string(c) + " of batch " + std::to_string(b) + " is missing");
      const BatchRecord& rec = records[r];
      g.cells[c].noise_sum += rec.noise[k];
      g.cells[c].correct += rec.correct[k];
      std::copy(rec.flags[k].begin(), rec.flags[k].end(), g.cells[c].correct_images.begin() + rec.begin);
    }
  }
  return g;
}

GridResult run_network_plans(const Executor& exec, const Dataset& eval, const Normalization& norm, int64_t count,
                             const std::vector<QuantPlan>& plans, const GridOptions& opt, const char* label) {
  const auto t0 = std::chrono::steady_clock::now();
  count = std::min(count, eval.count);
  const int64_t bs = opt.batch_size;
  const int64_t batches = (count + bs - 1) / bs;
  const size_t P = plans.size();
  // Records as the grid's, plan p in the place of cell p: a stopped run resumes from them.
  std::vector<int> all_plans(P);
  std::iota(all_plans.begin(), all_plans.end(), 0);
  std::vector<BatchRecord> records(batches);
  const std::vector<char> done = load_records(opt, all_plans, count, records);
  std::vector<int64_t> todo;
  int64_t todo_images = 0;
  for (int64_t b = 0; b < batches; ++b) {
    if (done[b]) continue;
    todo.push_back(b);
    todo_images += std::min(bs, count - b * bs);
  }
  auto finished = [&](BatchRecord&& rec) {
    if (opt.store) opt.store->save(rec);
    records[rec.batch] = std::move(rec);
  };
  auto start_record = [&](int64_t i, int64_t begin, int64_t n) {
    BatchRecord rec;
    rec.batch = i;
    rec.begin = begin;
    rec.images = n;
    rec.cells = all_plans;
    return rec;
  };
  Progress progress(label, todo_images, static_cast<int64_t>(P), opt.progress, "configs");
  if (todo.empty()) {
    // every batch recorded by an earlier attempt
  } else if (auto session = exec.backend().make_session(exec.graph())) {
    std::vector<std::pair<int, const LayerQuantization*>> prep;
    std::vector<DeviceJob> jobs;
    for (const QuantPlan& plan : plans) {
      for (size_t l = 0; l < plan.size(); ++l) {
        if (plan[l]) prep.emplace_back(static_cast<int>(l), plan[l]);
      }
      jobs.push_back({-1, nullptr, &plan});
    }
    session->prepare(prep);
    for_each_device_batch(
        *session, eval, norm, count, bs, todo, [&](int64_t) { return std::span<const DeviceJob>(jobs); }, false,
        [&](int64_t i, int64_t begin, int64_t n, DeviceOutcome& o) {
          BatchRecord rec = start_record(i, begin, n);
          rec.float_correct = o.float_correct;
          rec.energy = o.energy;
          require_finite_output(rec.energy, begin, n);
          rec.float_flags = std::move(o.float_flags);
          for (size_t p = 0; p < P; ++p) {
            rec.noise.push_back(o.noise[p]);
            rec.correct.push_back(o.correct[p]);
            rec.flags.push_back(std::move(o.flags[p]));
          }
          finished(std::move(rec));
          progress.add_images(n);
        },
        opt.stop);
    throw_if_stopped(opt);
  } else {
    for_each_batch(
        exec, eval, norm, count, bs, opt.threads,
        [&](Executor::Workspace& ws, const Tensor& x, int64_t i, int64_t begin, int64_t n) {
          throw_if_stopped(opt);
          const int32_t* labels = eval.labels.data() + begin;
          const Tensor y = exec.forward(ws, x);  // a copy: the plans' forwards reuse ws
          const size_t classes = static_cast<size_t>(y.numel() / n);
          BatchRecord rec = start_record(i, begin, n);
          rec.float_flags.assign(n, 0);
          rec.float_correct = record_top1(y, labels, n, rec.float_flags.data());
          rec.energy = squared_norm_sum(y.ptr(), n, classes);
          require_finite_output(rec.energy, begin, n);
          for (size_t p = 0; p < P; ++p) {
            const Tensor& yq = exec.forward(ws, x, &plans[p]);
            rec.noise.push_back(squared_error_sum(y.ptr(), yq.ptr(), n, classes));
            rec.flags.emplace_back(n, 0);
            rec.correct.push_back(record_top1(yq, labels, n, rec.flags.back().data()));
          }
          finished(std::move(rec));  // each batch its own element and file
          progress.add_images(n);
        },
        &todo);
  }
  progress.finish();
  // Cells in plan order, summed in batch order as the grid's are.
  GridResult r = assemble_grid(std::move(records), P, {0}, count, bs);
  r.weight_bits.clear();
  for (CellStats& c : r.cells) c.layer = -1;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace qsweep
