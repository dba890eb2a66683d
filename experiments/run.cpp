#include "experiments/run.h"
#include "runtime/device_session.h"
#ifdef QSWEEP_WITH_CUDA_BACKEND
#include "runtime/cuda_backend.h"
#endif

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <functional>
#include <limits>
#include <map>
#include <numeric>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <google/protobuf/stubs/common.h>
#include <nlohmann/json.hpp>
#include <onnx/common/version.h>
#include <omp.h>
#include <toml++/toml.h>
#include <unistd.h>
#include <sys/file.h>
#include <fcntl.h>

#include "experiments/progress.h"
#include "experiments/report.h"
#include "experiments/results.h"
#include "experiments/stats.h"
#include "experiments/studies.h"
#include "qsweep_version.h"
#include "runtime/error.h"
#include "runtime/onnx_import.h"
#include "runtime/scheduler.h"
#include "runtime/sha256.h"

namespace qsweep {

using nlohmann::json;

namespace {

std::string utc_now() {
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  std::tm tm{};
  gmtime_r(&now, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// Doubles in JSON: non-finite values (an SQNR of +inf) become null.
json num(double v) { return std::isfinite(v) ? json(v) : json(nullptr); }

std::string fmt_sqnr(double v) { return std::isfinite(v) ? fmt::format("{:.4f}", v) : "inf"; }
std::string fmt_ci(double v) { return std::isfinite(v) ? fmt::format("{:.4f}", v) : ""; }

// A TOML basic string literal for --set values.
std::string toml_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

// The identity of the data a run reads (runtime/data.h), hashed once per run.
struct DataIdentity {
  std::string images_sha256, labels_sha256;
};

json dataset_json(const Dataset& d, const DataIdentity& id, int64_t used) {
  return {{"split", d.name},
          {"images_path", d.images_path},
          {"labels_path", d.labels_path},
          {"images_sha256", id.images_sha256},
          {"labels_sha256", id.labels_sha256},
          {"images_in_split", d.count},
          {"images_used", used},
          {"order", image_order_name(d.order)}};
}

// Layers ordered worst first at one bit-width (degradation, then noise, then index).
std::vector<const CellStats*> worst_at(const GridResult& r, int bits) {
  std::vector<const CellStats*> v;
  for (const auto& c : r.cells) {
    if (c.weight_bits == bits) v.push_back(&c);
  }
  std::stable_sort(v.begin(), v.end(), [&](const CellStats* a, const CellStats* b) {
    if (r.degradation(*a) != r.degradation(*b)) return r.degradation(*a) > r.degradation(*b);
    if (a->noise_sum != b->noise_sum) return a->noise_sum > b->noise_sum;
    return a->layer < b->layer;
  });
  return v;
}

}  // namespace

std::string layerwise_csv(const Graph& g, const GridResult& r, const std::vector<QuantSpec>& specs,
                          const PairedBootstrap& boot) {
  std::string s =
      "layer_index,layer_name,op_type,weight_bits,act_bits,noise,sqnr_db,top1,degradation,correct,images,float_top1,"
      "ci_low,ci_high,top5,top5_degradation,correct5,float_top5,top5_ci_low,top5_ci_high\n";
  for (const auto& c : r.cells) {
    const Layer& L = g.layers[c.layer];
    const std::string name = csv_field(L.name);
    const Interval ci = boot.degradation_interval(r.float_correct_images, c.correct_images);
    const Interval ci5 = boot.degradation_interval(r.float_correct_images, c.correct_images, kTop5Bit);
    s += fmt::format("{},{},{},{},{},{:.9g},{},{:.4f},{:.4f},{},{},{:.4f},{},{},{:.4f},{:.4f},{},{:.4f},{},{}\n", c.layer,
                     name, op_name(g.nodes[L.node].op), c.weight_bits, specs[c.layer].act_bits, r.noise(c),
                     fmt_sqnr(r.sqnr_db(c)), r.top1(c), r.degradation(c), c.correct, r.images, r.float_top1(),
                     fmt_ci(ci.lo), fmt_ci(ci.hi), r.top5(c), r.top5_degradation(c), c.correct5(), r.float_top5(),
                     fmt_ci(ci5.lo), fmt_ci(ci5.hi));
  }
  return s;
}

std::atomic<bool>& stop_requested() {
  static std::atomic<bool> flag{false};
  return flag;
}

namespace {

namespace fs = std::filesystem;

// Everything a run needs, loaded and checked. Not movable: the executor points into it.
struct Prepared {
  Config cfg;
  Graph g;
  std::vector<QuantSpec> specs;
  std::unique_ptr<Backend> backend;
  std::unique_ptr<Executor> exec;
  Dataset calib, eval;
  Normalization norm;
  int threads = 1;
  int64_t eval_count = 0, calib_count = 0;
  std::string model_sha256;
  DataIdentity eval_id, calib_id;
  bool batch_auto = false;  // cfg.batch_size was "auto" (config_identity ignores the size chosen)
  int64_t batch_fit = std::numeric_limits<int64_t>::max();  // "auto": the largest batch that fits here
  // "auto": whether a batch of b images fits here by the rule a fixed run.batch_size is held to
  // (an earlier attempt's size is taken where it does).
  std::function<bool(int64_t)> batch_fits = [](int64_t) { return true; };
};

// The backend options a config asks for, on `device`.
BackendOptions backend_options(const Config& cfg, int device) {
  BackendOptions bo;
  bo.device = device;
  bo.tf32 = cfg.tf32;
  bo.transform_convs = cfg.conv_transforms;
  return bo;
}

// `compute`: the run will compute (false for a merge, which only reads the shards' records: no
// memory check, no one-image forward).
std::unique_ptr<Prepared> prepare(const Config& cfg, const std::function<void(const std::string&)>& say,
                                  bool compute = true) {
  auto p = std::make_unique<Prepared>();
  p->cfg = cfg;
  p->batch_auto = cfg.batch_size == 0;
  p->g = import_onnx(cfg.model_path);
  Graph& g = p->g;
  if (g.layers.empty()) user_error("{}: the model has no Conv, Gemm or MatMul layer to quantize", cfg.model_path);
  // Layer selectors are checked before any work is done.
  p->specs = resolve_layer_specs(g, cfg.quant);
  // SAWB's bit range on the layers as resolved (the variants' selectors checked on the way),
  // before the data are read.
  std::vector<int> grid_bits = cfg.quant.weight_bits;
  std::string bits_from = "quant.weight_bits";
  if (cfg.kind == "additivity") {
    grid_bits = {cfg.low_bits};
    if (cfg.high_bits != 0) grid_bits.push_back(cfg.high_bits);
    bits_from = "additivity.low_bits / high_bits";
  }
  if (cfg.kind == "full") grid_bits.clear();
  // A comparison with variants computes the variants only (each the base with its changes).
  if (!(cfg.kind == "full" && !cfg.variants.empty())) {
    check_sawb_bits(g, cfg.quant, grid_bits, bits_from, cfg.source + " ([quant])");
  }
  for (const auto& v : cfg.variants) {
    check_sawb_bits(g, v.quant, grid_bits, bits_from, fmt::format("{} (variant '{}')", cfg.source, v.name));
  }
  // Bias correction's one limit, before the data are read (it was found when the layer was
  // quantized, without naming the model).
  const bool correct_bias = (!(cfg.kind == "full" && !cfg.variants.empty()) && cfg.quant.bias_correction) ||
                            std::any_of(cfg.variants.begin(), cfg.variants.end(),
                                        [](const Variant& v) { return v.quant.bias_correction; });
  for (const Layer& L : g.layers) {
    const Node& n = g.nodes[L.node];
    if (correct_bias && n.op == OpType::kGemm && n.attrs.beta != 1.0f) {
      user_error("{}: node '{}' (Gemm) has beta = {}; quant.bias_correction supports Gemm layers with beta = 1 only "
                 "(fold beta into the model's bias, or turn bias correction off)",
                 cfg.model_path, n.name, n.attrs.beta);
    }
  }
  // quant.weight_bits is the layer-wise grid's columns (and full's bit-width); an additivity run
  // takes its bit-widths from [additivity] (a config.toml a run wrote lists the default).
  if (cfg.kind == "additivity" && cfg.quant.weight_bits != QuantConfig{}.weight_bits) {
    say(fmt::format("note: quant.weight_bits = [{}] is not used by an additivity run: its grid and configurations "
                    "use additivity.low_bits and high_bits",
                    fmt::join(cfg.quant.weight_bits, ", ")));
  }
  if (cfg.kind != "full" && cfg.quant.equalization) {
    const int pairs = equalize_cross_layer(g);
    say(fmt::format("cross-layer equalization: {} Conv -> Conv pairs equalized", pairs));
  }
  // One worker: the first listed device.
  p->backend = make_backend(cfg.backend, backend_options(cfg, cfg.devices.empty() ? 0 : cfg.devices[0]));
  if (cfg.tf32 && !p->backend->tf32()) {
    say(fmt::format("note: run.tf32 applies to the CUDA backend only; the {} backend computes in plain FP32 "
                    "(the manifest records what ran)",
                    p->backend->name()));
  }
  if (cfg.conv_transforms && !p->backend->conv_transforms()) {
    say(fmt::format("note: run.conv_transforms needs a CUDA device or a CPU with AVX-512; the {} backend runs "
                    "plain FP32 direct convolutions here (the manifest records what ran)",
                    p->backend->name()));
  }
  p->exec = std::make_unique<Executor>(g, *p->backend);
  // A model of flat inputs (N, F) reads images flattened (below); an image folder's channels
  // then come from data.mean.
  const bool flat_input = g.input_shape.size() == 1;
  auto load_split = [&](const std::string& split) {
    if (cfg.dataset != "imagefolder") return load_idx_split(cfg.data_path, split);
    const int channels = flat_input ? static_cast<int>(cfg.mean.size())
                                    : g.input_shape.empty() ? 0 : static_cast<int>(g.input_shape[0]);
    if (channels != 1 && channels != 3) {
      user_error("{}: {}; image folders give 1 (grayscale) or 3 (RGB) channels", flat_input ? cfg.source : cfg.model_path,
                 flat_input ? fmt::format("data.mean has {} values, one per image channel", channels)
                            : fmt::format("the model takes {} input channels", channels));
    }
    return load_image_folder_split(cfg.data_path, split, channels, ImageTransforms{cfg.resize, cfg.crop});
  };
  p->calib = load_split(cfg.calibration_split);
  p->eval = cfg.eval_split == cfg.calibration_split ? p->calib : load_split(cfg.eval_split);
  // Image-folder labels are indices into the sorted class folders of each split: an
  // evaluation split missing a class folder of the calibration split would shift every later
  // label (audit: a validation split without its first class scored 0% at float32). A
  // calibration split of other folders (fewer classes, or one "unlabeled" folder) is fine:
  // calibration reads no labels.
  auto strict_subset = [](const std::vector<std::string>& a, const std::vector<std::string>& b) {
    return a.size() < b.size() &&
           std::all_of(a.begin(), a.end(), [&](const std::string& c) { return std::find(b.begin(), b.end(), c) != b.end(); });
  };
  if (cfg.dataset == "imagefolder" && strict_subset(p->eval.classes, p->calib.classes)) {
    std::vector<std::string> missing;
    for (const auto& c : p->calib.classes) {
      if (std::find(p->eval.classes.begin(), p->eval.classes.end(), c) == p->eval.classes.end()) {
        missing.push_back("'" + c + "'");
      }
    }
    if (missing.size() > 3) missing.resize(3), missing.push_back("...");
    user_error("{}: the {} split lacks the class folder{} {} of the {} split; labels are class folder indices, so the "
               "evaluation split needs every class folder",
               cfg.data_path, cfg.eval_split, missing.size() == 1 ? "" : "s", fmt::join(missing, ", "),
               cfg.calibration_split);
  }
  // Which images are "the first N" of each (config.cpp validated the names).
  auto order_of = [](const std::string& name) {
    ImageOrder o = ImageOrder::kFile;
    parse_image_order(name, o);
    return o;
  };
  reorder_split(p->calib, order_of(cfg.calibration_order), cfg.data_seed);
  reorder_split(p->eval, order_of(cfg.eval_order), cfg.data_seed);
  if (static_cast<int64_t>(cfg.mean.size()) != p->eval.channels) {
    user_error("{}: data.mean and data.std have {} values; the images have {} channel(s)", cfg.source, cfg.mean.size(),
               p->eval.channels);
  }
  const Shape sample{p->eval.channels, p->eval.height, p->eval.width};
  if (flat_input && g.input_shape[0] == shape_numel(sample)) {
    // The images flattened, channel by channel and row by row, as x.view(N, -1) in PyTorch.
    flatten_graph_input(g, sample);
    p->exec = std::make_unique<Executor>(g, *p->backend);
    say(fmt::format("the model takes flat inputs of {} values: each {} image is flattened (as x.view(N, -1))",
                    shape_numel(sample), shape_str(sample)));
  }
  if (g.input_shape != sample) {
    user_error("{}: the model expects inputs of shape {} per image; the dataset in '{}' has {}{}", cfg.model_path,
               shape_str(g.input_shape), cfg.data_path, shape_str(sample),
               flat_input ? fmt::format(" ({} values; a model of flat inputs needs as many as an image has)",
                                        shape_numel(sample))
               : cfg.dataset == "imagefolder" ? " (data.resize and data.crop bring the images to the model's size)"
                                              : "");
  }
  p->norm = Normalization{cfg.mean, cfg.std};
  p->threads = cfg.threads > 0 ? cfg.threads : omp_get_num_procs();
  p->eval_count = cfg.eval_count > 0 ? std::min(cfg.eval_count, p->eval.count) : p->eval.count;
  p->calib_count = std::min(cfg.calibration_count, p->calib.count);
  if (cfg.eval_count > p->eval.count) {
    say(fmt::format("note: data.eval.count = {}, but the {} split has {} images: all {} are used", cfg.eval_count,
                    cfg.eval_split, p->eval.count, p->eval.count));
  }
  if (cfg.calibration_count > p->calib.count) {
    say(fmt::format("note: data.calibration.count = {}, but the {} split has {} images: all {} are used",
                    cfg.calibration_count, cfg.calibration_split, p->calib.count, p->calib.count));
  }
  p->model_sha256 = sha256_file(cfg.model_path);
  // Reading every image of a large folder takes a while: a stop ends the run here.
  const auto throw_if_stop = [] {
    if (stop_requested()) throw RunInterrupted("interrupted while reading the data; nothing was written");
  };
  p->eval_id.images_sha256 = images_sha256(p->eval, p->eval_count, &stop_requested());
  throw_if_stop();
  p->eval_id.labels_sha256 = labels_sha256(p->eval);
  p->calib_id.images_sha256 = images_sha256(p->calib, p->calib_count, &stop_requested());
  throw_if_stop();
  p->calib_id.labels_sha256 = labels_sha256(p->calib);
  const int64_t images = std::max(p->eval_count, p->calib_count);
  if (compute) {
    // A label the model cannot output would count as wrong on every image, silently.
    const int64_t outputs = outputs_per_image(*p->exec);
    if (p->eval.num_classes > outputs) {
      user_error("{}: the {} split has labels up to {}{}, but the model '{}' gives {} output{} per image; "
                 "evaluate it on data with at most {} classes",
                 p->eval.labels_path, cfg.eval_split, p->eval.num_classes - 1,
                 p->eval.image_folder() ? fmt::format(" ({} class folders)", p->eval.classes.size()) : "",
                 cfg.model_path, outputs, outputs == 1 ? "" : "s", outputs);
    }
  }
  // The CPU's workers each keep a batch's values: what fits in the memory this machine has
  // available bounds "auto", and a fixed batch size that would not fit is refused before the
  // run instead of ending it by the kernel's OOM killer. QSWEEP_AVAILABLE_MEMORY (bytes)
  // stands in for MemAvailable (tests).
  const bool cpu = compute && p->backend->name() == "cpu";
  int64_t per_image = 0, available = 0;
  if (cpu) {
    per_image = cpu_bytes_per_image(*p->exec);
    const char* env = std::getenv("QSWEEP_AVAILABLE_MEMORY");
    if (env && *env) {
      const std::string text(env);
      const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), available);
      if (ec != std::errc() || end != text.data() + text.size() || available < 1) {
        user_error("QSWEEP_AVAILABLE_MEMORY='{}': a number of bytes (digits only, e.g. 8000000000)", text);
      }
    } else {
      available = available_memory_bytes();
    }
  }
  // The rule a batch size must keep on the CPU: batches of b images keep b images' values in each
  // busy worker (smaller batches keep more workers busy), plus the weights, their quantized
  // copies and the kernels' rearranged copies (about 3 times), within 90% of what is available.
  const int64_t threads = std::max(p->threads, 1);
  const auto busy = [images, threads](int64_t b) {
    return std::max<int64_t>(1, std::min<int64_t>(threads, (std::max<int64_t>(images, 1) + b - 1) / b));
  };
  const double fixed = 3.0 * static_cast<double>(model_bytes(g));
  const auto need = [per_image, images, busy, fixed](int64_t b) {  // kept by batch_fits: by value
    b = std::min<int64_t>(b, std::max<int64_t>(images, 1));
    return static_cast<double>(per_image) * static_cast<double>(b) * static_cast<double>(busy(b)) + fixed;
  };
  const double budget = 0.9 * static_cast<double>(available);
  // The largest batch of at most `cap` images that keeps the rule (0: not even one); searched,
  // as need() is not monotonic in b.
  const auto largest_fit = [&](int64_t cap) {
    int64_t b = std::max<int64_t>(std::min<int64_t>(cap, std::max<int64_t>(images, 1)), 1);
    while (b >= 1 && need(b) > budget) --b;
    return b;
  };
  const auto size = [](double b) {
    return b >= (1 << 30) ? fmt::format("{:.1f} GiB", b / (1 << 30)) : fmt::format("{:.1f} MiB", b / (1 << 20));
  };
  const auto too_big = [&](int64_t batch) {
    const int64_t workers = busy(std::min<int64_t>(batch, std::max<int64_t>(images, 1)));
    const std::string what = fmt::format(
        "{}: run.batch_size = {} on {} thread{} would keep about {} in memory ({} per image in each busy worker, plus "
        "{} for the weights and their copies), more than 90% of the {} available",
        cfg.source, cfg.batch_size == 0 ? "\"auto\" (1 image per batch)" : std::to_string(batch), workers,
        workers == 1 ? "" : "s", size(need(batch)), size(static_cast<double>(per_image)),
        size(fixed), size(static_cast<double>(available)));
    const int64_t fit = largest_fit(batch);
    const std::string fewer = threads > 1 ? ", or fewer run.threads" : "";
    if (fit >= 1) {
      user_error("{}; set run.batch_size to {} or less (or \"auto\"){} (the results do not depend on either)", what,
                 fit, fewer);
    }
    user_error("{}; even one image per batch does not fit: {}", what,
               threads > 1 ? "use fewer run.threads or a machine with more memory" : "use a machine with more memory");
  };
  if (cfg.batch_size == 0) {  // "auto"
    if (auto session = p->backend->make_session(g)) {
      p->cfg.batch_size = session->max_batch(std::min<int64_t>(images, 8192));
      p->batch_fit = p->cfg.batch_size;
      p->batch_fits = [fit = p->batch_fit](int64_t b) { return b <= fit; };
    } else {
      p->cfg.batch_size = cpu_auto_batch_size(images, p->threads);
      if (cpu && available > 0) {
        // Half of what is available, shared by the workers; where not even one image fits so,
        // the largest batch the rule above allows (none: refused as a fixed size would be).
        const int64_t spare = std::max<int64_t>(available / 2 - 3 * model_bytes(g), 0);
        const int64_t half_fit = spare / (per_image * threads);
        p->batch_fit = largest_fit(std::max<int64_t>(images, 1));
        if (p->batch_fit < 1) too_big(1);
        p->batch_fits = [need, budget](int64_t b) { return need(b) <= budget; };
        p->cfg.batch_size = half_fit >= 1 ? std::min(p->cfg.batch_size, half_fit)
                                          : std::min(p->cfg.batch_size, p->batch_fit);
      }
    }
  } else if (cpu && available > 0 && need(p->cfg.batch_size) > budget) {
    too_big(p->cfg.batch_size);
  }
  return p;
}

json summary_header(const Prepared& p) {
  const Config& cfg = p.cfg;
  json summary;
  summary["experiment"] = cfg.name;
  summary["kind"] = cfg.kind;
  summary["mode"] = cfg.naive ? "naive" : "one-pass";
  summary["images"] = p.eval_count;
  summary["act_bits"] = cfg.quant.base.act_bits;
  summary["scheme"] = scheme_name(cfg.quant.base.scheme);
  summary["granularity"] = granularity_name(cfg.quant.base.granularity);
  summary["weight_clip"] = clip_name(cfg.quant.base.clip);
  summary["confidence"] = cfg.confidence;
  json layers = json::array();
  for (const Layer& L : p.g.layers) {
    layers.push_back({{"index", L.index},
                      {"name", L.name},
                      {"op_type", op_name(p.g.nodes[L.node].op)},
                      {"activation", L.act_node >= 0 ? std::string(op_name(p.g.nodes[L.act_node].op)) : ""},
                      {"weight_shape", p.g.constant(L.weight_value).shape}});
  }
  summary["layers"] = layers;
  return summary;
}

// layerwise.csv and the grid part of summary.json.
void write_grid(ResultsFolder& folder, const Prepared& p, const GridResult& gr, const PairedBootstrap& boot,
                json& summary) {
  summary["float_top1"] = gr.float_top1();
  summary["float_correct"] = gr.float_correct;
  summary["float_top5"] = gr.float_top5();
  summary["float_correct5"] = gr.float_correct5();
  summary["weight_bits"] = gr.weight_bits;
  json cells = json::array();
  for (const auto& c : gr.cells) {
    const Interval ci = boot.degradation_interval(gr.float_correct_images, c.correct_images);
    const Interval ci5 = boot.degradation_interval(gr.float_correct_images, c.correct_images, kTop5Bit);
    cells.push_back({{"layer_index", c.layer},
                     {"layer_name", p.g.layers[c.layer].name},
                     {"weight_bits", c.weight_bits},
                     {"noise", gr.noise(c)},
                     {"sqnr_db", num(gr.sqnr_db(c))},
                     {"top1", gr.top1(c)},
                     {"degradation", gr.degradation(c)},
                     {"ci_low", num(ci.lo)},
                     {"ci_high", num(ci.hi)},
                     {"correct", c.correct},
                     {"top5", gr.top5(c)},
                     {"top5_degradation", gr.top5_degradation(c)},
                     {"top5_ci_low", num(ci5.lo)},
                     {"top5_ci_high", num(ci5.hi)},
                     {"correct5", c.correct5()}});
  }
  summary["grid"] = cells;
  json worst = json::object();
  for (int b : gr.weight_bits) {
    json list = json::array();
    auto w = worst_at(gr, b);
    for (size_t i = 0; i < w.size() && i < static_cast<size_t>(p.cfg.worst); ++i) {
      list.push_back({{"layer_index", w[i]->layer},
                      {"layer_name", p.g.layers[w[i]->layer].name},
                      {"degradation", gr.degradation(*w[i])},
                      {"noise", gr.noise(*w[i])}});
    }
    worst[std::to_string(b)] = list;
  }
  summary["worst_layers"] = worst;
  summary["grid_seconds"] = gr.seconds;
  folder.write("layerwise.csv", layerwise_csv(p.g, gr, p.specs, boot));
}

json manifest_json(const Prepared& p, const std::string& command_line, const std::vector<std::string>& overrides,
                   const std::string& started, double wall_seconds) {
  const Config& cfg = p.cfg;
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  json manifest;
  manifest["qsweep_version"] = QSWEEP_VERSION;
  manifest["git_commit"] = QSWEEP_GIT_COMMIT;
  manifest["command_line"] = command_line;
  manifest["config_file"] = cfg.source;
  manifest["overrides"] = overrides;
  manifest["started_utc"] = started;
  manifest["finished_utc"] = utc_now();
  manifest["wall_seconds"] = wall_seconds;
  manifest["host"] = host;
  manifest["model"] = {{"path", cfg.model_path},
                       {"sha256", p.model_sha256},
                       {"opset", p.g.opset},
                       {"layers", p.g.layers.size()},
                       {"nodes", p.g.nodes.size()}};
  manifest["dataset"] = {{"name", cfg.dataset},
                         {"path", cfg.data_path},
                         {"eval", dataset_json(p.eval, p.eval_id, p.eval_count)},
                         {"calibration", dataset_json(p.calib, p.calib_id, p.calib_count)}};
  manifest["backend"] = {{"name", p.backend->name()},     {"device", p.backend->device_name()},
                         {"threads", p.threads},            {"tf32", p.backend->tf32()},
                         {"conv_transforms", p.backend->conv_transforms()}, {"batch_size", p.cfg.batch_size}};
  if (const int v = p.backend->fused_conv_variant(); v >= 0) manifest["backend"]["fused_conv_variant"] = v;
  manifest["libraries"] = {{"backend", p.backend->library_versions()},
                           {"onnx", ONNX_NAMESPACE::LAST_RELEASE_VERSION},
                           {"protobuf", google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION)},
                           {"tomlplusplus", fmt::format("{}.{}.{}", TOML_LIB_MAJOR, TOML_LIB_MINOR, TOML_LIB_PATCH)},
                           {"fmt", FMT_VERSION},
                           {"nlohmann_json", fmt::format("{}.{}.{}", NLOHMANN_JSON_VERSION_MAJOR,
                                                         NLOHMANN_JSON_VERSION_MINOR, NLOHMANN_JSON_VERSION_PATCH)},
                           {"compiler", __VERSION__}};
  return manifest;
}

// Figures and report.html into the staging folder; never fails the run.
// `resumable`: the numbers are recorded where the same command finds them again (a one-pass
// layer-wise grid); other runs would start over.
void add_report(ResultsFolder& folder, const Graph& g, bool resumable) {
  try {
    const fs::path dir = folder.staging_path();
    ReportOptions ro = report_options_for(dir);
    ro.final_dir = folder.final_path();
    ro.stop = &stop_requested();
    const ReportResult r = write_report(dir, ro, &g);
    // Warnings (figures skipped: gnuplot missing or failing) are shown even with --quiet.
    if (!stop_requested()) {
      for (const auto& w : r.warnings) eprint("qsweep: warning: {}\n", w);
    }
  } catch (const std::exception& e) {
    eprint("qsweep: warning: the report could not be written: {}; the numbers are complete: draw the figures and "
           "report.html with `qsweep report {}` once that is fixed\n",
           e.what(), shell_quote(folder.final_path().string()));
  }
  // A signal to the process group (Ctrl-C, SLURM) kills gnuplot too: its figure would be
  // missing from a folder that looks finished. Where the numbers would have to be computed
  // again, the folder is kept and the figures are left to qsweep report.
  if (stop_requested()) {
    if (resumable) {
      throw RunInterrupted("interrupted while the report was drawn; nothing was moved into place (run the same "
                           "command again to finish it)");
    }
    eprint("qsweep: warning: a stop was requested during the run; its numbers are complete, its figures "
           "may not be: draw them with qsweep report {}\n",
           folder.final_path().string());
  }
}

void print_grid(const Prepared& p, const GridResult& grid) {
  fmt::print("float32 top-1: {:.2f}% (top-5 {:.2f}%) on {} images; grid of {} cells in {:.1f} s\n", grid.float_top1(),
             grid.float_top5(), grid.images, grid.cells.size(), grid.seconds);
  const auto [lowest, highest] = std::minmax_element(grid.weight_bits.begin(), grid.weight_bits.end());
  for (int b : {*lowest, *highest}) {
    fmt::print("worst layers at {}-bit weights:\n", b);
    auto w = worst_at(grid, b);
    for (size_t i = 0; i < w.size() && i < static_cast<size_t>(p.cfg.worst); ++i) {
      fmt::print("  {:>3} {:<40} degradation {:+7.2f} pts  noise {:.4g}  SQNR {} dB\n", w[i]->layer,
                 printable(p.g.layers[w[i]->layer].name), grid.degradation(*w[i]), grid.noise(*w[i]),
                 fmt_sqnr(grid.sqnr_db(*w[i])));
    }
    if (grid.weight_bits.size() == 1) break;
  }
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Shard I of N: --shard, else the SLURM array task, else 0 of 1.
std::pair<int, int> resolve_shard(const std::string& spec) {
  if (!spec.empty()) {
    int i = -1, n = -1;
    char slash = 0;
    std::istringstream in(spec);
    if (!(in >> i >> slash >> n) || slash != '/' || !in.eof() || n < 1 || i < 0 || i >= n) {
      user_error("--shard {}: expected I/N with 0 <= I < N, e.g. --shard 2/8", spec);
    }
    return {i, n};
  }
  const char* id = std::getenv("SLURM_ARRAY_TASK_ID");
  const char* count = std::getenv("SLURM_ARRAY_TASK_COUNT");
  if (id && count) {
    const char* min = std::getenv("SLURM_ARRAY_TASK_MIN");
    const char* max = std::getenv("SLURM_ARRAY_TASK_MAX");
    const char* step = std::getenv("SLURM_ARRAY_TASK_STEP");
    const int i = std::atoi(id) - (min ? std::atoi(min) : 0), n = std::atoi(count);
    // Every task refuses an array with gaps (--array=0-6:2, --array=1,3,7), not only those whose
    // index lies beyond the count: the others would compute shards that can never be merged.
    if ((step && std::atoi(step) != 1) || (min && max && std::atoi(max) - std::atoi(min) + 1 != n)) {
      user_error("the SLURM array runs tasks {}-{}{} ({} tasks): qsweep shards need a contiguous array such as "
                 "--array=0-{}", min ? min : "?", max ? max : "?", step && std::atoi(step) != 1 ? fmt::format(":{}", step) : "",
                 count, n > 0 ? n - 1 : 0);
    }
    if (n < 1 || i < 0 || i >= n) {
      user_error("SLURM_ARRAY_TASK_ID={} (min {}) and SLURM_ARRAY_TASK_COUNT={} do not name a shard; use a "
                 "contiguous array such as --array=0-{}", id, min ? min : "0", count, n > 0 ? n - 1 : 0);
    }
    return {i, n};
  }
  return {0, 1};
}

// --run-id, else the SLURM array job, else a hash of the config as run: every shard of one
// run finds the same folder without talking to the others.
std::string resolve_run_id(const RunOptions& o, const Config& cfg) {
  std::string id = o.run_id;
  if (id.empty() && o.shard.empty() && std::getenv("SLURM_ARRAY_TASK_ID")) {
    if (const char* job = std::getenv("SLURM_ARRAY_JOB_ID")) id = std::string("slurm-") + job;
  }
  if (id.empty()) {  // the config as run, without [output]: --out rr and --out ./rr are one run
    const std::string text = config_identity(cfg);
    id = "cfg-" + sha256_hex(text.data(), text.size()).substr(0, 12);
  }
  if (!is_folder_name(id)) {
    user_error("--run-id {}: a run id is a name without slashes or control characters that does not start with '.'",
               id);
  }
  // A folder name has at most 255 bytes; the work folder adds 6 and temporaries some more.
  // --fresh appends 17 characters to the id it is given (and -2, -3, ... where two runs
  // start in the same second), so that one may have 159.
  const size_t most = o.fresh ? 159 : 180;
  if (id.size() > most) {
    user_error("--run-id {}...: {} characters; a run id has at most {}{}", id.substr(0, 20), id.size(), most,
               o.fresh ? " with --fresh (which appends a 17-character time stamp)" : "");
  }
  return id;
}

fs::path work_dir_of(const fs::path& final_dir) {
  return final_dir.parent_path() / fmt::format(".{}.work", final_dir.filename().string());
}

std::string shard_dir_name(int i, int n) { return fmt::format("shard-{}-of-{}", i, n); }

// The grid cells' per-image costs and the shard plan, identical on every shard.
ShardPlan make_plan(const Prepared& p, int shards) {
  Tensor one;
  load_batch(p.eval, p.norm, 0, 1, one);
  const auto nc = node_costs(*p.exec, one);
  std::vector<double> cell_cost;
  for (const Layer& L : p.g.layers) {
    for (size_t b = 0; b < p.cfg.quant.weight_bits.size(); ++b) cell_cost.push_back(suffix_cost(*p.exec, nc, L.index));
  }
  const int64_t batches = (p.eval_count + p.cfg.batch_size - 1) / p.cfg.batch_size;
  return plan_shards(cell_cost, forward_cost(nc), batches, p.cfg.batch_size, p.eval_count, shards);
}

// The work folder of a run id, created. The config as run, but for its [output] table, is
// the run's identity (config_identity): a folder that holds another configuration is
// refused. The config.toml there is the first attempt's (written once: shards on several
// hosts would race to replace it).
void claim_work_dir(const fs::path& work, const Config& cfg, bool any_batch_size, bool write = true) {
  std::error_code ec;
  fs::create_directories(work, ec);
  if (ec) user_error("cannot create '{}': {}", work.string(), ec.message());
  const std::string identity = config_identity(cfg, any_batch_size);
  const fs::path file = work / "config.toml";
  if (!fs::exists(file)) {
    // The first attempt's, created whole or not at all: of two configurations started together
    // under one run id, the second then compares with it.
    if (!write || create_file_once(file, config_to_toml(cfg))) return;
  }
  if (config_identity_of_file(file.string(), any_batch_size) != identity) {
    user_error("'{}' belongs to a run with another configuration (compare its config.toml); use another --run-id",
               work.string());
  }
}

// run.batch_size = "auto" is settled once per run id: the first attempt (or shard) records the
// size it chose in the work folder, and every later one takes that size where it fits. A
// resume on a busier machine so keeps the recorded batches, and shards on mixed machines cut
// the data the same way (merge combines records of one batch size only; calibration, done
// next, uses it too). A shard where the recorded size does not fit is refused before it
// computes; an unsharded resume takes the size that fits here and records it, and its batches
// of the other size are computed again.
constexpr const char* kAutoBatchFile = "auto_batch_size";

// Returns whether the earlier size was taken.
bool settle_auto_batch_size(const fs::path& work, Prepared& p, bool sharded) {
  if (!p.batch_auto) return false;
  const fs::path pin = work / kAutoBatchFile;
  const int64_t mine = p.cfg.batch_size;
  const std::string text = std::to_string(mine) + "\n";
  auto recorded = [&]() -> int64_t {  // 0: absent or damaged
    std::error_code ec;
    if (!fs::exists(pin, ec)) return 0;
    const std::string t = read_file(pin);
    int64_t v = 0;
    const auto [end, err] = std::from_chars(t.data(), t.data() + t.size(), v);
    return err == std::errc() && v > 0 && (end == t.data() + t.size() || *end == '\n') ? v : 0;
  };
  int64_t first = recorded();
  std::error_code ec0;
  if (first == 0 && fs::exists(work / "config.toml", ec0)) {
    // The size this run's earlier attempts computed with is also in the work folder's
    // config.toml, written once a size was settled: where the record of it is damaged (a hand
    // edit), or absent because they asked for a number (the same run for the identity).
    const bool damaged = fs::exists(pin, ec0);
    try {
      first = load_config((work / "config.toml").string(), {}).batch_size;
    } catch (const UserError&) {
      first = 0;
    }
    if (first > 0) {
      if (damaged) {
        eprint("qsweep: note: '{}' is damaged; the batch size this run computes with, {}, is taken from "
               "'{}'\n", pin.string(), first, (work / "config.toml").string());
      }
      write_file_atomic(pin, std::to_string(first) + "\n");
    }
  }
  if (first == 0) {
    // Of shards starting together one size wins, and the others read it whole.
    if (create_file_once(pin, text)) return false;
    if ((first = recorded()) == 0) {  // damaged meanwhile
      write_file_atomic(pin, text);
      return false;
    }
  }
  if (first == mine) return false;
  if (p.batch_fits(first)) {
    p.cfg.batch_size = first;
    return true;
  }
  if (sharded) {
    user_error("run.batch_size = \"auto\": this run's shards compute {} images per batch (recorded for this run in "
               "'{}'), but at most {} fit here, and shards of other batch sizes cannot be merged; set run.batch_size "
               "to a number that fits every machine (e.g. {}) and use another --run-id",
               first, pin.string(), p.batch_fit, p.batch_fit);
  }
  eprint("qsweep: note: run.batch_size = \"auto\": this run's earlier attempt computed {} images per batch, but at "
         "most {} fit here; its recorded batches are computed again with {}\n",
         first, p.batch_fit, mine);
  write_file_atomic(pin, text);
  return false;
}

// Whether `final_dir` holds this configuration's finished run (summary.json): the numbers of
// another configuration under the same run id, of another model file content under the
// same path (a retrained model), or of a damaged folder are refused, not served as this one's.
// (The data are not hashed again here: a changed data file under the same path is not seen.)
bool finished_here(const fs::path& final_dir, const Config& cfg, bool any_batch_size) {
  if (!fs::exists(final_dir / "summary.json")) return false;
  const std::string table = cfg.kind == "layerwise"    ? "layerwise.csv"
                            : cfg.kind == "additivity" ? "additivity.csv"
                                                       : "comparison.csv";
  auto damaged = [&](const std::string& what) {
    user_error("'{}' holds a damaged finished run ({}); pass --fresh to compute it again, or use another --run-id",
               final_dir.string(), what);
  };
  // Another configuration first (another kind has another table: not "damaged").
  if (!fs::is_regular_file(final_dir / "config.toml")) damaged("summary.json but no config.toml");
  if (config_identity_of_file((final_dir / "config.toml").string(), any_batch_size) != config_identity(cfg, any_batch_size)) {
    user_error("'{}' holds a finished run of another configuration (compare its config.toml); use another --run-id, "
               "or --fresh",
               final_dir.string());
  }
  for (const std::string& f : {std::string("manifest.json"), table}) {
    if (!fs::is_regular_file(final_dir / f)) damaged("summary.json but no " + f);
  }
  if (!json::accept(read_file(final_dir / "summary.json"))) damaged("summary.json is not valid JSON");
  const std::string manifest_text = read_file(final_dir / "manifest.json");
  if (!json::accept(manifest_text)) damaged("manifest.json is not valid JSON");
  // Tables cut short, emptied or edited, as `qsweep report` finds them.
  try {
    check_results_tables(final_dir);
  } catch (const UserError& e) {
    damaged(e.what());
  }
  const json manifest = json::parse(manifest_text);
  const json* sha = manifest.contains("model") && manifest.at("model").is_object() && manifest.at("model").contains("sha256")
                        ? &manifest.at("model").at("sha256")
                        : nullptr;
  if (sha == nullptr || !sha->is_string()) damaged("its manifest.json names no model sha256");
  if (fs::is_regular_file(cfg.model_path)) {
    if (const std::string now = sha256_file(cfg.model_path); now != sha->get<std::string>()) {
      user_error("'{}' holds a finished run of another model: '{}' has sha256 {} now, the run's manifest.json {}; "
                 "pass --fresh to compute it again, or use another --run-id",
                 final_dir.string(), cfg.model_path, now.substr(0, 12), sha->get<std::string>().substr(0, 12));
    }
  }
  return true;
}

// What records depend on besides the config: the model file and the data.
json inputs_of(const Prepared& p) {
  return {{"model_sha256", p.model_sha256},
          {"eval_images_sha256", p.eval_id.images_sha256},
          {"eval_labels_sha256", p.eval_id.labels_sha256},
          {"calibration_images_sha256", p.calib_id.images_sha256},
          {"calibration_labels_sha256", p.calib_id.labels_sha256}};
}

// A grid's compute time over the attempts at a run (or shard, or study): the earlier
// attempts' is kept in grid_seconds.json beside the batch records, and record() adds this
// attempt's so far and writes the total down. Called with each batch record, so that a process
// killed outright keeps its time up to its last record; a resumed run's grid_seconds covers
// every attempt.
constexpr const char* kSecondsFile = "grid_seconds.json";

class GridSeconds {
 public:
  explicit GridSeconds(fs::path dir) : dir_(std::move(dir)), earlier_(read(dir_)) {}
  // this_attempt: the seconds since this attempt's grid began. Returns the total.
  double record(double this_attempt) const {
    std::lock_guard lock(mu_);
    const double total = earlier_ + this_attempt;
    write_file_atomic(dir_ / kSecondsFile, json{{"grid_seconds", total}}.dump() + "\n");
    return total;
  }

 private:
  static double read(const fs::path& dir) {
    if (!fs::exists(dir / kSecondsFile)) return 0.0;
    try {
      return json::parse(read_file(dir / kSecondsFile)).value("grid_seconds", 0.0);
    } catch (const std::exception&) {
      return 0.0;  // damaged: the earlier attempts' time is unknown
    }
  }
  fs::path dir_;
  double earlier_;
  mutable std::mutex mu_;
};

// A folder of batch records (`*.rec`) computed from `inputs`. A resumed attempt whose inputs
// changed since (a fixed image, a retrained model under the same path) computes everything
// again rather than mixing batches of both: the records (and a DONE.json) are removed, with a
// note. Then the inputs are written down, and temp files of an interrupted write removed.
void check_record_inputs(const fs::path& dir, const json& inputs) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) user_error("cannot create '{}': {}", dir.string(), ec.message());
  std::vector<std::string> what;  // what changed, each once, in the order of `inputs`
  if (fs::exists(dir / "inputs.json")) {
    json was;
    try {
      was = json::parse(read_file(dir / "inputs.json"));
    } catch (const std::exception&) {
      was = json::object();
    }
    for (const auto& [key, value] : inputs.items()) {
      if (was.is_object() && was.contains(key) && was[key] == value) continue;
      const std::string name = key.rfind("model", 0) == 0   ? "the model file"
                               : key.rfind("eval", 0) == 0  ? "the evaluation data"
                               : key.rfind("plans", 0) == 0 ? "the configurations' layer subsets (qsweep changed them)"
                                                            : "the calibration data";
      if (std::find(what.begin(), what.end(), name) == what.end()) what.push_back(name);
    }
  } else if (fs::directory_iterator(dir) != fs::directory_iterator()) {
    what.push_back("the inputs (which the earlier attempt did not record)");
  }
  const std::string changed = fmt::format("{}", fmt::join(what, " and "));
  std::vector<fs::path> stale;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (name[0] == '.') {
      fs::remove(e.path(), ec);  // temp files of an interrupted write
    } else if (!changed.empty() && (e.path().extension() == ".rec" || name == "DONE.json" || name == kSecondsFile)) {
      stale.push_back(e.path());
    }
  }
  size_t dropped = 0;
  for (const auto& f : stale) {
    if (!fs::remove(f, ec) && ec) user_error("cannot remove '{}' ({}): remove it by hand", f.string(), ec.message());
    dropped += f.extension() == ".rec";
  }
  if (dropped > 0) {
    eprint("qsweep: {} changed since the earlier attempt: its {} recorded batches are computed again\n",
           changed, dropped);
  }
  write_file_atomic(dir / "inputs.json", inputs.dump(2) + "\n");
}

// The batch records of one phase of a run, as files `<phase>-<batch>.rec` in `dir`; a damaged
// file reads as no record (the batch is computed again).
class RecordFiles {
 public:
  // keep_seconds: the grid phase, whose seconds sum over the attempts (grid_seconds.json).
  RecordFiles(fs::path dir, std::string phase, bool keep_seconds = false)
      : dir_(std::move(dir)), phase_(std::move(phase)) {
    if (keep_seconds) {
      seconds_ = std::make_unique<GridSeconds>(dir_);
      store_.seconds = [this](double now) { return seconds_->record(now); };
    }
    store_.load = [this](int64_t b) -> std::optional<BatchRecord> {
      const fs::path f = path(b);
      std::error_code ec;
      if (!fs::exists(f, ec)) return std::nullopt;
      return decode_record(read_file(f));
    };
    store_.save = [this](const BatchRecord& r) {
      write_file_atomic(path(r.batch), encode_record(r));
      ++saved_;
    };
  }
  const BatchStore* store() const { return &store_; }
  int64_t saved() const { return saved_; }  // batches computed by this attempt

 private:
  fs::path path(int64_t b) const { return dir_ / fmt::format("{}-{:06}.rec", phase_, b); }
  fs::path dir_;
  std::string phase_;
  BatchStore store_;
  mutable std::atomic<int64_t> saved_{0};
  std::unique_ptr<GridSeconds> seconds_;
};

// An exclusive lock on a folder of records (a shard's, or a study's) for as long as this process
// computes into it: the same command started twice (or a requeued SLURM task whose first try
// still runs) is refused at once instead of computing the same batches and then failing when
// the first removes the work folder. flock() (NFS: emulated with fcntl locks); where the file
// system has no locks the run goes on unlocked.
class RecordsLock {
 public:
  // `wait`: block until the holder is done (merge: the second of two merges then finds the
  // results), instead of refusing.
  explicit RecordsLock(const fs::path& dir, bool wait = false) {
    const fs::path file = dir / "lock";
    fd_ = ::open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd_ < 0) user_error("cannot create '{}': {}", file.string(), std::strerror(errno));
    if (wait) {  // polled, so that a stop (Ctrl-C, scancel) ends the wait: flock() restarts after a signal
      while (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
        if (errno != EWOULDBLOCK && errno != EINTR) return;  // no locks here: unlocked
        if (stop_requested()) {
          ::close(fd_);
          fd_ = -1;
          throw RunInterrupted("interrupted while waiting for another merge of this run; nothing was written");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      return;
    }
    // Tried for a second before refusing: another run's check of this folder (used_shard_split)
    // holds it for a moment.
    for (int tries = 1;; ++tries) {
      if (::flock(fd_, LOCK_EX | LOCK_NB) == 0) break;
      if (errno != EWOULDBLOCK) return;  // no locks here (ENOLCK, EINVAL): unlocked
      if (tries < 10) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        continue;
      }
      char holder[256] = {0};
      const ssize_t n = ::pread(fd_, holder, sizeof holder - 1, 0);
      std::string who = n > 0 ? std::string(holder, static_cast<size_t>(n)) : std::string();
      while (!who.empty() && (who.back() == '\n' || who.back() == ' ')) who.pop_back();
      ::close(fd_);
      fd_ = -1;
      user_error("'{}' is being computed by another process{}; wait for it to finish (the same command then says "
                 "where the results are), or stop it first",
                 dir.string(), who.empty() ? "" : " (" + who + ")");
    }
    char host[256] = {0};
    gethostname(host, sizeof host - 1);
    const std::string me = fmt::format("pid {} on {}\n", getpid(), host);
    if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, me.data(), me.size(), 0);
  }
  RecordsLock(const RecordsLock&) = delete;
  RecordsLock& operator=(const RecordsLock&) = delete;
  ~RecordsLock() {
    if (fd_ >= 0) ::close(fd_);  // releases the lock
  }

 private:
  int fd_ = -1;
};

// The same run's finished folder, where another process of it (the same command started twice)
// finished first: its result, not a clash ("already exists"). Under the records lock this
// cannot happen; it can where the file system has no locks. A finished run of another
// configuration there is refused (finished_here).
std::optional<fs::path> finished_meanwhile(const fs::path& final_dir, const Config& cfg, bool batch_auto) {
  if (!finished_here(final_dir, cfg, batch_auto)) return std::nullopt;
  eprint("qsweep: note: another process of this run finished it first; its results: {}\n",
         final_dir.string());
  return final_dir;
}

// Writes the final results folder of a layer-wise grid (unsharded end of run, or merge).
// `final_dir`: <output.root>/<experiment.name>/<run_id>, or the folder merge was pointed at
// (the shards' output.root may be relative to other working folders, the experiment folder
// renamed).
fs::path finish_layerwise(const Prepared& p, const GridResult& grid, const fs::path& final_dir, json manifest) {
  if (auto done = finished_meanwhile(final_dir, p.cfg, p.batch_auto)) return *done;
  const PairedBootstrap boot(static_cast<size_t>(p.eval_count), p.cfg.bootstrap, p.cfg.stats_seed, p.cfg.confidence);
  ResultsFolder folder(final_dir.parent_path().parent_path().string(), final_dir.parent_path().filename().string(),
                       final_dir.filename().string());
  folder.write("config.toml", config_to_toml(p.cfg));
  json summary = summary_header(p);
  write_grid(folder, p, grid, boot, summary);
  folder.write("layers.csv", layers_csv(p.g, p.specs,
                                        *std::min_element(p.cfg.quant.weight_bits.begin(), p.cfg.quant.weight_bits.end())));
  folder.write("summary.json", summary.dump(2) + "\n");
  folder.write("manifest.json", manifest.dump(2) + "\n");
  add_report(folder, p.g, !p.cfg.naive);
  return folder.commit();
}

RunOutcome run_layerwise(const RunOptions& o, const Prepared& p, const ActivationRanges& ranges,
                         const std::string& started, std::chrono::steady_clock::time_point t0, bool verbose) {
  const Config& cfg = p.cfg;
  const auto [shard, shards] = resolve_shard(o.shard);  // a sharded naive grid is refused by run_experiment
  const std::string run_id = resolve_run_id(o, cfg);
  const fs::path final_dir = fs::path(cfg.root) / cfg.name / run_id;
  const fs::path work = work_dir_of(final_dir);
  RunOutcome out;
  out.config = cfg;
  out.folder = final_dir;
  // run_experiment has claimed the work folder (the identity, the split) and locked this
  // shard's folder, and found the run unfinished.
  std::error_code ec;
  const fs::path sdir = work / shard_dir_name(shard, shards);

  const ShardPlan plan = make_plan(p, shards);
  GridJob job;
  job.cells_of_batch = cells_by_batch(plan, shard);
  const size_t B = cfg.quant.weight_bits.size();
  const size_t ncells = p.g.layers.size() * B;

  const json inputs = inputs_of(p);
  check_record_inputs(sdir, inputs);

  // Resume: batches already recorded by an earlier attempt are kept; damaged or partial
  // files are discarded (check_record_inputs removed the temp files of interrupted writes).
  std::vector<BatchRecord> records;
  std::set<int64_t> done;
  for (const auto& e : fs::directory_iterator(sdir)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("batch-", 0) != 0 || e.path().extension() != ".rec") continue;
    auto rec = decode_record(read_file(e.path()));
    // Only a record of this batch as this attempt cuts the images (an "auto" batch size may
    // come out otherwise on a resume) and of its cells is kept.
    if (!rec || rec->batch < 0 || rec->batch >= plan.batches || rec->cells != job.cells_of_batch[rec->batch] ||
        !record_fits_batches(*rec, cfg.batch_size, p.eval_count)) {
      fs::remove(e.path(), ec);
      continue;
    }
    done.insert(rec->batch);
    records.push_back(std::move(*rec));
  }
  int64_t todo = 0;
  for (int64_t b = 0; b < plan.batches; ++b) todo += !job.cells_of_batch[b].empty() && !done.count(b);
  if (verbose && shards > 1) {
    eprint("shard {}/{} of run {}: {} work units, estimated cost {:.3g} (mean {:.3g})\n", shard, shards, run_id,
           plan.units[shard].size(), plan.cost[shard],
           std::accumulate(plan.cost.begin(), plan.cost.end(), 0.0) / shards);
  }
  if (verbose && !done.empty()) eprint("resuming: {} batches already recorded, {} to go\n", done.size(), todo);

  // Quantize only the cells this shard computes, once each.
  std::vector<char> needed(ncells, 0);
  for (const auto& cells : job.cells_of_batch) {
    for (int c : cells) needed[c] = 1;
  }
  const BiasCorrectionSource bc{&p.calib, p.norm, p.calib_count};
  std::vector<size_t> cells_here;
  std::vector<std::pair<int, int>> layer_bits;
  for (size_t c = 0; c < ncells; ++c) {
    if (!needed[c] || todo == 0 || cfg.naive) continue;  // the naive grid quantizes its cells itself
    cells_here.push_back(c);
    layer_bits.emplace_back(static_cast<int>(c / B), cfg.quant.weight_bits[c % B]);
  }
  std::vector<std::unique_ptr<QuantizedLayer>> made = quantize_layers(
      *p.exec, layer_bits, p.specs, ranges, cfg.quant.bias_correction ? &bc : nullptr, cfg.batch_size, p.threads,
      &stop_requested());
  std::vector<std::unique_ptr<QuantizedLayer>> quant(ncells);
  std::vector<const LayerQuantization*> cell_quant(ncells, nullptr);
  for (size_t i = 0; i < cells_here.size(); ++i) {
    quant[cells_here[i]] = std::move(made[i]);
    cell_quant[cells_here[i]] = &quant[cells_here[i]]->q;
  }
  const GridSeconds clock(sdir);
  const auto g0 = std::chrono::steady_clock::now();
  const auto grid_seconds = [&] {  // the total over the attempts, written down
    return clock.record(std::chrono::duration<double>(std::chrono::steady_clock::now() - g0).count());
  };
  std::mutex mu;
  job.done = [&](int64_t b) { return done.count(b) > 0; };
  job.sink = [&](BatchRecord&& rec) {
    std::lock_guard lock(mu);
    // With each record (just before it): an attempt that ends without a word (SIGKILL, a lost
    // node) keeps its time up to its last recorded batch.
    grid_seconds();
    write_file_atomic(sdir / fmt::format("batch-{:06}.rec", rec.batch), encode_record(rec));
    records.push_back(std::move(rec));
  };
  job.stop = &stop_requested();
  GridOptions gopt;
  gopt.batch_size = cfg.batch_size;
  gopt.threads = p.threads;
  gopt.progress = verbose;
  gopt.stop = &stop_requested();
  gopt.naive = cfg.naive;
  GridResult grid;
  if (cfg.naive) {
    grid = run_layerwise_grid(*p.exec, p.eval, p.norm, p.eval_count, ranges, p.specs, cfg.quant.weight_bits, gopt,
                              cfg.quant.bias_correction ? &bc : nullptr);
  } else {
    // One worker per device, each with its own backend and executor; they take turns over
    // the batches and share the CPU threads. Records do not depend on who computed them.
    // run.devices = "all": every GPU of the CUDA backend, one worker for the CPU backend.
    std::vector<int> devices = cfg.devices;
#ifdef QSWEEP_WITH_CUDA_BACKEND
    if (devices.empty() && p.backend->name() == "cuda") {
      for (int d = 0; d < cuda_device_count(); ++d) devices.push_back(d);
    }
#endif
    const int workers = std::max<int>(1, devices.size());
    bool complete = true;
    if (workers == 1) {
      complete = run_grid_batches(*p.exec, p.eval, p.norm, p.eval_count, cell_quant, B, job, gopt);
    } else {
      if (verbose) {
        const int each = std::max(1, p.threads / workers);
        eprint("{} workers on devices [{}], {} thread{} each\n", workers, fmt::join(devices, ", "), each,
               each == 1 ? "" : "s");
      }
      // One progress line for all workers: the images of every batch left to compute.
      int64_t todo_images = 0, cells_max = 0;
      for (int64_t b = 0; b < static_cast<int64_t>(job.cells_of_batch.size()); ++b) {
        if (job.cells_of_batch[b].empty() || (job.done && job.done(b))) continue;
        todo_images += std::min<int64_t>(p.cfg.batch_size, p.eval_count - b * p.cfg.batch_size);
        cells_max = std::max<int64_t>(cells_max, static_cast<int64_t>(job.cells_of_batch[b].size()));
      }
      Progress shared("grid", todo_images, cells_max, gopt.progress);
      std::vector<std::thread> pool;
      std::vector<char> ok(workers, 1);
      std::vector<std::string> errors(workers);
      for (int w = 0; w < workers; ++w) {
        pool.emplace_back([&, w] {
          try {
            auto backend = make_backend(cfg.backend, backend_options(cfg, devices[w]));
            const Executor exec(p.g, *backend);
            GridJob mine = job;
            int64_t k = 0;
            for (auto& cells : mine.cells_of_batch) {
              if (!cells.empty() && (k++ % workers) != w) cells.clear();
            }
            GridOptions wo = gopt;
            wo.threads = std::max(1, p.threads / workers);
            wo.shared_progress = &shared;
            ok[w] = run_grid_batches(exec, p.eval, p.norm, p.eval_count, cell_quant, B, mine, wo);
          } catch (const std::exception& e) {
            ok[w] = 0;
            errors[w] = e.what();
          }
        });
      }
      for (auto& t : pool) t.join();
      shared.finish();
      for (int w = 0; w < workers; ++w) {
        if (!errors[w].empty()) user_error("worker {} (device {}): {}", w, devices[w], errors[w]);
        complete = complete && ok[w];
      }
    }
    if (!complete) {
      grid_seconds();
      out.interrupted = true;
      eprint("qsweep: interrupted: {} batches of shard {}/{} are recorded in {}; {}\n", records.size(), shard,
             shards, sdir.string(),
             o.fresh_id ? fmt::format("run it again with --run-id {} instead of --fresh to resume", run_id)
             : std::string("run the same command again to resume"));
      return out;
    }
    if (shards > 1) {
      // The identity without the batch size: merge checks each record's images instead.
      const std::string shard_identity = config_identity(cfg, true);
      const double seconds = grid_seconds();  // a rerun of the finished shard adds to them
      json dj = {{"shard", shard},
                 {"shards", shards},
                 {"run_id", run_id},
                 {"config_sha256", sha256_hex(shard_identity.data(), shard_identity.size())},
                 {"batches", plan.batches},
                 {"records", records.size()},
                 {"estimated_cost", plan.cost[shard]},
                 {"grid_seconds", seconds},  // this shard's, over its attempts
                 {"finished_utc", utc_now()}};
      dj.update(inputs);  // the model's and the data's sha256, hashed once at the start
      write_file_atomic(sdir / "DONE.json", dj.dump(2) + "\n");
      if (verbose) {
        fmt::print("shard {}/{} done ({} batches); once all {} shards are done: qsweep merge {}\n", shard, shards,
                   records.size(), shards, final_dir.string());
      }
      return out;
    }
    grid = assemble_grid(std::move(records), p.g.layers.size(), cfg.quant.weight_bits, p.eval_count, cfg.batch_size);
    grid.seconds = grid_seconds();  // a stop while the report is drawn keeps them
  }
  json manifest = manifest_json(p, o.command_line, o.overrides, started,
                                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  manifest["run_id"] = run_id;
  manifest["batches_from_earlier_attempts"] = done.size();  // resumed: grid_seconds sums every attempt
  out.folder = finish_layerwise(p, grid, final_dir, manifest);
  remove_work_folder(work);  // its records are in the results now
  if (verbose) {
    print_grid(p, grid);
    fmt::print("results: {}\n", out.folder.string());
  }
  out.grid = std::move(grid);
  return out;
}

}  // namespace

RunOutcome run_experiment(const RunOptions& o) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string started = utc_now();
  std::vector<std::string> overrides = o.overrides;
  if (!o.backend.empty()) {
    if (o.backend != "cpu" && o.backend != "cuda" && o.backend != "auto") {
      user_error("--backend {}: accepted: cpu, cuda, auto", o.backend);
    }
    overrides.push_back(fmt::format("run.backend=\"{}\"", o.backend));
  }
  if (o.naive) overrides.push_back("run.naive=true");
  if (!o.out_root.empty()) overrides.push_back(fmt::format("output.root={}", toml_string(o.out_root)));
  Config cfg = load_config(o.config_path, overrides);
  const bool verbose = !o.quiet;
  auto say = [&](const std::string& s) {
    if (verbose) eprint("{}\n", s);
  };
  // A bad --shard or --run-id, or a naive grid asked to be sharded, is reported before any work.
  if (resolve_shard(o.shard).second > 1 && cfg.naive && cfg.kind == "layerwise") {
    user_error("run.naive cannot be sharded; the naive way is for comparisons on one machine");
  }
  resolve_run_id(o, cfg);
  if (cfg.kind != "layerwise" && (!o.shard.empty() || std::getenv("SLURM_ARRAY_TASK_ID"))) {
    if (!o.shard.empty() || std::getenv("SLURM_ARRAY_TASK_COUNT")) {
      user_error("kind = \"{}\" cannot be sharded yet; shard a \"layerwise\" grid", cfg.kind);
    }
  }
  if (o.fresh) {
    if (std::getenv("SLURM_ARRAY_TASK_ID")) {
      // Each task would stamp its own id: the shards of one array would land in different runs.
      user_error("--fresh inside a SLURM array task would give every shard a run of its own; submit with a new "
                 "--run-id instead");
    }
    if (!o.shard.empty()) {
      user_error("--fresh with --shard would give every shard a run of its own; give the shards one new --run-id "
                 "instead");
    }
    // A new run id: nothing earlier is reused.
    RunOptions fresh = o;
    fresh.fresh = false;
    fresh.fresh_id = true;
    // started is YYYY-MM-DDTHH:MM:SSZ; the suffix is YYYYMMDDTHHMMSSZ.
    std::string stamp;
    for (char ch : started) {
      if (ch != '-' && ch != ':') stamp += ch;
    }
    // The id is reserved by creating its work folder (atomic: of two runs started in the same
    // second, one gets -2), and given back if the run fails before it records anything.
    const std::string base = fmt::format("{}-{}", resolve_run_id(o, cfg), stamp);
    const fs::path parent = fs::path(cfg.root) / cfg.name;
    std::error_code ec;
    // The folders this attempt makes (the results root, the experiment's), given back with the id.
    std::vector<fs::path> made;
    for (fs::path f = parent; !f.empty() && !fs::exists(f, ec); f = f.parent_path()) made.push_back(f);
    fs::create_directories(parent, ec);
    if (ec) user_error("cannot create the results folder '{}': {}", parent.string(), ec.message());
    fresh.run_id = base;
    for (int i = 2; fs::exists(parent / fresh.run_id) || !fs::create_directory(work_dir_of(parent / fresh.run_id), ec); ++i) {
      if (ec) user_error("cannot create '{}': {}", work_dir_of(parent / fresh.run_id).string(), ec.message());
      fresh.run_id = fmt::format("{}-{}", base, i);
    }
    // A run that ends before recording a batch gives its id back; one that stopped with
    // records says how to resume it (the same command would start another fresh run).
    const fs::path work = work_dir_of(parent / fresh.run_id);
    auto after_stop = [&] {
      bool records = false;
      for (const auto& e : fs::recursive_directory_iterator(work, ec)) records = records || e.path().extension() == ".rec";
      if (!records) {
        fs::remove_all(work, ec);
        for (const fs::path& f : made) fs::remove(f, ec);  // each only while empty (another run may use it)
      }
    };
    RunOutcome out;
    try {
      out = run_experiment(fresh);
    } catch (const RunInterrupted& e) {
      after_stop();
      // "run the same command again" would start another fresh run: where there is something to
      // resume (after_stop() kept the work folder), the message names the --run-id that does.
      std::string m = e.what();
      const std::string same = "run the same command again";
      if (fs::exists(work)) {
        for (size_t at; (at = m.find(same)) != std::string::npos;) {
          m.replace(at, same.size(), "run it again with --run-id " + fresh.run_id + " instead of --fresh");
        }
      }
      throw RunInterrupted(m);
    } catch (...) {
      after_stop();  // records a failed attempt finished are kept, like a stopped one's
      if (fs::exists(work)) {
        eprint("qsweep: the batches this --fresh run recorded are kept: run it with --run-id {} instead "
               "of --fresh to resume\n", fresh.run_id);
      }
      throw;
    }
    if (out.interrupted) after_stop();
    return out;
  }
  // The run id, from the config as given ("auto" batch size unresolved), for every step below.
  RunOptions ro = o;
  ro.run_id = resolve_run_id(o, cfg);
  // A finished run is found before anything is loaded (only its model file is hashed). What a
  // process killed outright at its end left beside it goes: a staging folder (results.h), and an
  // unsharded run's work folder, whose records are in the results (a merged run's keeps its
  // shards, as documented).
  if (const fs::path done = fs::path(cfg.root) / cfg.name / ro.run_id; finished_here(done, cfg, cfg.batch_size == 0)) {
    remove_abandoned_staging(done.parent_path(), ro.run_id);
    if (const fs::path work = work_dir_of(done); fs::is_directory(work)) {
      bool merged = false;
      std::error_code ec;
      for (const auto& e : fs::directory_iterator(work, ec)) merged = merged || used_shard_split(e) > 1;
      if (!merged) remove_work_folder(work);
    }
    // --fresh gives every shard a run of its own: a shard is told to name a new run instead.
    const bool sharded = resolve_shard(o.shard).second > 1;
    if (verbose) {
      fmt::print("already complete: {} ({})\nresults: {}\n", done.string(),
                 sharded ? "give every shard one new --run-id to compute it again" : "pass --fresh to compute it again",
                 done.string());
    }
    RunOutcome out;
    out.config = cfg;
    out.folder = done;
    return out;
  }
  // Anything else at the results path would be found only when the finished run moves there,
  // after the whole grid.
  // (One that finished just now, by another process of this run, is served further down.)
  if (const fs::path at = fs::path(cfg.root) / cfg.name / ro.run_id;
      fs::exists(fs::symlink_status(at)) && !fs::exists(at / "summary.json")) {
    user_error("'{}' already exists and holds no finished run; remove it, choose another --run-id, or pass --fresh",
               at.string());
  }
  const auto p = prepare(cfg, say);
  // The records folder this process computes into is locked before anything in the work folder
  // changes (a second process of the run changes nothing and is refused). Another
  // configuration's folder, or a shard of another split, is refused before that.
  const auto [shard, shards] = resolve_shard(o.shard);
  const fs::path final_dir = fs::path(cfg.root) / cfg.name / ro.run_id;
  const fs::path work = work_dir_of(final_dir);
  claim_work_dir(work, p->cfg, p->batch_auto, /*write=*/false);
  const fs::path records = cfg.kind == "layerwise" ? work / shard_dir_name(shard, shards) : work / "study";
  {
    std::error_code ec;
    fs::create_directories(records, ec);
    if (ec) user_error("cannot create '{}': {}", records.string(), ec.message());
  }
  const RecordsLock lock(records);
  // Every attempt splits the grid the same way, checked once this shard's folder is locked (a
  // run of another count started at the same moment sees it in use; used_shard_split).
  for (const auto& e : fs::directory_iterator(work)) {
    if (const int n = used_shard_split(e); n != 0 && n != shards) {
      user_error("'{}' holds the grid {}; this run has it {}{}: use the same count, or another --run-id",
                 work.string(), split_text(n), split_text(shards),
                 shards > 1 ? fmt::format(" (shard {}/{})", shard, shards) : std::string());
    }
  }
  if (finished_here(final_dir, p->cfg, p->batch_auto)) {  // by the process that held the lock until now
    if (verbose) fmt::print("already complete: {} (another process of this run finished it)\n", final_dir.string());
    if (shards == 1) remove_work_folder(work);  // made again by this process; the results hold its records
    RunOutcome out;
    out.config = cfg;
    out.folder = final_dir;
    return out;
  }
  // config.toml is written once an "auto" batch size is settled (merge reads the shards' batch
  // size from it: shards starting together wrote their own sizes before agreeing on one).
  if (p->batch_auto) {
    const bool adopted = settle_auto_batch_size(work, *p, shards > 1);
    say(fmt::format("run.batch_size = \"auto\": {} image{} per batch on {}{}", p->cfg.batch_size,
                    p->cfg.batch_size == 1 ? "" : "s", p->backend->device_name(),
                    adopted ? " (as this run's first attempt or shard chose)" : ""));
  }
  claim_work_dir(work, p->cfg, p->batch_auto);
  say(fmt::format("qsweep {} ({}): {} layers on {} {} images ({}{}), backend {} ({} threads)", cfg.name, cfg.kind,
                  p->g.layers.size(), p->eval_count, cfg.eval_split, cfg.dataset,
                  cfg.eval_order == "file" ? "" : fmt::format(", {} order", cfg.eval_order), p->backend->name(),
                  p->threads));
  say(fmt::format("calibrating activation ranges on the first {} {} images{}", p->calib_count, cfg.calibration_split,
                  cfg.calibration_order == "file" ? "" : fmt::format(" ({} order)", cfg.calibration_order)));
  // A stop during the preparation (hashing, calibration) ends the run before its first batch.
  auto stop_before_batches = [] {
    if (stop_requested()) throw RunInterrupted("interrupted before the first batch; no batch was recorded");
  };
  stop_before_batches();
  const ActivationRanges ranges =
      calibrate(*p->exec, p->calib, p->norm, p->calib_count, p->cfg.batch_size, p->threads, &stop_requested());
  stop_before_batches();
  if (cfg.kind == "layerwise") return run_layerwise(ro, *p, ranges, started, t0, verbose);

  StudyContext ctx;
  ctx.exec = p->exec.get();
  ctx.calib = &p->calib;
  ctx.eval = &p->eval;
  ctx.norm = p->norm;
  ctx.calib_count = p->calib_count;
  ctx.eval_count = p->eval_count;
  ctx.ranges = &ranges;
  ctx.options.batch_size = p->cfg.batch_size;
  ctx.options.threads = p->threads;
  ctx.options.naive = cfg.naive;
  ctx.options.progress = verbose;
  ctx.options.stop = &stop_requested();
  const PairedBootstrap boot(static_cast<size_t>(p->eval_count), cfg.bootstrap, cfg.stats_seed, cfg.confidence);
  json summary = summary_header(*p);
  ResultsFolder folder(cfg.root, cfg.name, ro.run_id);  // unfinished: checked under the lock above
  // Finished batches are kept in the work folder (claimed and locked above), so a stopped run
  // resumes where it stopped; records of another batch size are not reused (checked per record).
  const fs::path records_dir = records;
  json study_inputs = inputs_of(*p);
  if (cfg.kind == "additivity") {
    // The configurations a plan record's index stands for (they changed once within one config:
    // repeated subsets were redrawn), so that records of other subsets are not resumed.
    std::string subsets;
    for (const auto& s : additivity_subsets(static_cast<int>(p->g.layers.size()), cfg.additivity_configs,
                                            cfg.additivity_seed)) {
      subsets += fmt::format("{}\n", fmt::join(s, ";"));
    }
    study_inputs["plans_sha256"] = sha256_hex(subsets.data(), subsets.size());
  }
  check_record_inputs(records_dir, study_inputs);
  const RecordFiles grid_records(records_dir, "grid", /*keep_seconds=*/true), plan_records(records_dir, "plans");
  ctx.grid_store = grid_records.store();
  ctx.plan_store = plan_records.store();
  folder.write("config.toml", config_to_toml(p->cfg));  // as run: an "auto" batch size as chosen, as layer-wise runs write it
  GridResult grid;
  int stats_bits = cfg.quant.base.weight_bits;
  if (cfg.kind == "additivity") {
    AdditivityResult a = run_additivity(ctx, cfg, boot);
    grid = std::move(a.grid);
    write_grid(folder, *p, grid, boot, summary);
    stats_bits = cfg.low_bits;
    folder.write("additivity.csv", additivity_csv(a, cfg));
    summary["additivity"] = {{"configs", a.rows.size()},
                             {"low_bits", cfg.low_bits},
                             {"high_bits", cfg.high_bits},
                             {"seed", cfg.additivity_seed},
                             {"degradation", {{"pearson_r", num(a.r_degradation)}, {"slope", num(a.slope_degradation)}}},
                             {"noise", {{"pearson_r", num(a.r_noise)}, {"slope", num(a.slope_noise)}}}};
    if (verbose) {
      print_grid(*p, grid);
      fmt::print("additivity over {} configurations ({}-bit subsets, others {}): degradation r = {:.3f}, slope = {:.3f}; "
                 "noise r = {:.3f}, slope = {:.3f}\n",
                 a.rows.size(), cfg.low_bits, cfg.high_bits ? fmt::format("{}-bit", cfg.high_bits) : "float32",
                 a.r_degradation, a.slope_degradation, a.r_noise, a.slope_noise);
    }
  } else {  // full
    ComparisonResult c = run_comparison(ctx, cfg, boot);
    summary["float_top1"] = c.eval.float_top1();
    summary["float_correct"] = c.eval.float_correct;
    summary["float_top5"] = c.eval.float_top5();
    summary["float_correct5"] = c.eval.float_correct5();
    json rows = json::array();
    for (const auto& row : c.rows) {
      rows.push_back({{"variant", row.name},
                      {"description", row.description},
                      {"top1", row.top1},
                      {"degradation", row.degradation},
                      {"noise", row.noise},
                      {"ci_low", num(row.ci.lo)},
                      {"ci_high", num(row.ci.hi)},
                      {"top5", row.top5},
                      {"top5_degradation", row.top5_degradation},
                      {"top5_ci_low", num(row.ci5.lo)},
                      {"top5_ci_high", num(row.ci5.hi)}});
    }
    summary["comparison"] = rows;
    folder.write("comparison.csv", comparison_csv(c));
    folder.write("layers.csv", c.layers_csv);  // each variant's ranges, not the base [quant]'s only
    if (verbose) {
      fmt::print("float32 top-1: {:.2f}% (top-5 {:.2f}%) on {} images\n", c.eval.float_top1(), c.eval.float_top5(),
                 c.eval.images);
      for (const auto& row : c.rows) {
        // No interval without bootstrap resamples (stats.bootstrap = 0).
        const std::string ci = std::isfinite(row.ci.lo) ? fmt::format(" [{}, {}]", fmt_ci(row.ci.lo), fmt_ci(row.ci.hi)) : "";
        fmt::print("  {:<24} top-1 {:6.2f}%  degradation {:+6.2f} pts{}  noise {:.4g}\n", row.name, row.top1,
                   row.degradation, ci, row.noise);
      }
    }
  }
  if (cfg.kind != "full") folder.write("layers.csv", layers_csv(p->g, p->specs, stats_bits));
  folder.write("summary.json", summary.dump(2) + "\n");
  json manifest = manifest_json(*p, o.command_line, o.overrides, started,
                                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  manifest["run_id"] = folder.run_id();
  // Each batch of each recorded phase (the grid of a naive additivity run keeps none) was
  // computed by this attempt or an earlier one.
  const int64_t batches = (p->eval_count + p->cfg.batch_size - 1) / p->cfg.batch_size;
  const int64_t phases = cfg.kind == "additivity" && !cfg.naive ? 2 : 1;
  manifest["batches_from_earlier_attempts"] = phases * batches - grid_records.saved() - plan_records.saved();
  folder.write("manifest.json", manifest.dump(2) + "\n");
  add_report(folder, p->g, !(cfg.kind == "additivity" && cfg.naive));  // a naive grid would be computed again

  RunOutcome out;
  if (auto done = finished_meanwhile(folder.final_path(), p->cfg, p->batch_auto)) {
    out.folder = *done;
  } else {
    out.folder = folder.commit();
  }
  std::error_code ec;
  remove_work_folder(work);  // its records are in the results now
  out.config = cfg;
  out.grid = std::move(grid);
  if (verbose) fmt::print("results: {}\n", out.folder.string());
  return out;
}

RunOutcome merge_run(const std::string& dir, bool quiet) {
  const auto t0 = std::chrono::steady_clock::now();
  const bool verbose = !quiet;
  fs::path given = fs::absolute(fs::path(dir)).lexically_normal();  // a bare run id names ./<id>
  if (given.filename().empty()) given = given.parent_path();
  fs::path final_dir, work;
  const std::string base = given.filename().string();
  if (base.size() > 6 && base[0] == '.' && base.substr(base.size() - 5) == ".work") {
    work = given;
    final_dir = given.parent_path() / base.substr(1, base.size() - 6);
  } else {
    final_dir = given;
    work = work_dir_of(given);
  }
  RunOutcome out;
  out.folder = final_dir;
  // A merged run is served again only while its tables are intact.
  const auto merged_already = [&] {
    if (!fs::exists(final_dir / "summary.json")) return false;
    try {
      check_results_tables(final_dir);
    } catch (const UserError& e) {
      user_error("'{}' holds a damaged finished run ({}); move it away and run the shards again (its records went "
                 "into it), or restore it from a copy",
                 final_dir.string(), e.what());
    }
    if (verbose) fmt::print("already complete, nothing to merge: {}\n", final_dir.string());
    return true;
  };
  if (merged_already()) return out;
  if (std::error_code ec; fs::exists(final_dir, ec)) {  // found only when the results move there, after the work
    user_error("'{}' already exists and holds no finished run; move it away and merge again", final_dir.string());
  }
  if (!fs::is_directory(work)) {
    user_error("'{}' has no shard results (expected the folder '{}' written by `qsweep run --shard I/N`)", dir,
               work.string());
  }
  if (!fs::exists(work / "config.toml")) {
    if (fs::is_directory(work / "slurm")) {
      user_error("'{}' holds only the scripts of qsweep submit: no shard has started; run the array first",
                 work.string());
    }
    user_error("'{}' has no config.toml; it is not a qsweep run folder", work.string());
  }
  // Two merges of one run (the SLURM merge job and one by hand): the second waits, then finds
  // the results (it used to fail with "already exists").
  const RecordsLock merging(work, /*wait=*/true);
  if (merged_already()) return out;
  const std::string identity = config_identity_of_file((work / "config.toml").string(), true);  // as each DONE.json
  const std::string config_sha = sha256_hex(identity.data(), identity.size());
  // Shards present and their count.
  std::map<int, fs::path> shard_dirs;
  std::set<int> counts;
  for (const auto& e : fs::directory_iterator(work)) {
    int i = 0, n = 0;
    if (used_shard_split(e) != 0 && std::sscanf(e.path().filename().c_str(), "shard-%d-of-%d", &i, &n) == 2) {
      if (i < 0 || n < 1 || i >= n || e.path().filename().string() != shard_dir_name(i, n)) {
        user_error("'{}' is not a shard folder qsweep writes (shard I of N has 0 <= I < N); remove it and merge again",
                   e.path().string());
      }
      counts.insert(n);
      shard_dirs[i] = e.path();
    }
  }
  if (counts.empty() && fs::is_directory(work / "study")) {
    user_error("'{}' holds the records of an unfinished additivity or full-network run, which is not sharded: run "
               "the same qsweep run command again to resume it",
               work.string());
  }
  if (counts.empty()) user_error("'{}' holds no shard folders", work.string());
  if (counts.size() > 1) {
    user_error("'{}' mixes shards of different splits ({}); they come from different runs", work.string(),
               fmt::join(counts, " and "));
  }
  const int shards = *counts.begin();
  std::vector<std::string> missing, mismatched;
  for (int i = 0; i < shards; ++i) {
    const fs::path done = work / shard_dir_name(i, shards) / "DONE.json";
    if (!fs::exists(done)) missing.push_back(std::to_string(i));
  }
  if (shards == 1) {
    user_error("'{}' holds the records of an unfinished run, which is not sharded: run the same qsweep run command "
               "again to resume it",
               work.string());
  }
  if (!missing.empty()) {
    // The command that computes a missing shard into this run: its id and output root too (an
    // explicit --shard does not take the id from a SLURM array).
    const fs::path root = final_dir.parent_path().parent_path();
    user_error("cannot merge '{}': shard(s) {} of {} are missing or unfinished; run them (e.g. qsweep run CONFIG "
               "--shard {}/{} --run-id {} --out {}, with the other shards' --set options) and merge again",
               final_dir.string(), fmt::join(missing, ", "), shards, missing[0], shards, final_dir.filename().string(),
               shell_quote(root.empty() ? std::string(".") : root.string()));
  }
  Config cfg = load_config((work / "config.toml").string(), {});
  auto p = prepare(cfg, [](const std::string&) {}, /*compute=*/false);
  const std::string& eval_images_sha = p->eval_id.images_sha256;
  const std::string& eval_labels_sha = p->eval_id.labels_sha256;
  const std::string& calib_images_sha = p->calib_id.images_sha256;
  const std::string& calib_labels_sha = p->calib_id.labels_sha256;
  std::vector<BatchRecord> records;
  std::map<std::pair<int64_t, int>, int> cell_owner;  // (batch, cell) -> the shard holding it
  double grid_seconds = 0.0;  // the shards' compute time, summed
  for (int i = 0; i < shards; ++i) {
    const fs::path sdir = work / shard_dir_name(i, shards);
    // DONE.json's fields; a file that is not a JSON object, or whose fields have other types
    // (a hand edit, a truncated copy), is damaged.
    std::string d_config, d_model, d_eval_images, d_eval_labels, d_calib_images, d_calib_labels;
    bool d_has_calib = false;
    std::optional<size_t> d_records;
    try {
      const json dj = json::parse(read_file(sdir / "DONE.json"));
      if (!dj.is_object()) throw std::runtime_error("not a JSON object");
      auto text = [&](const char* key) {
        if (!dj.contains(key)) return std::string();
        if (!dj[key].is_string()) throw std::runtime_error("a field of another type");
        return dj[key].get<std::string>();
      };
      d_config = text("config_sha256");
      d_model = text("model_sha256");
      d_eval_images = text("eval_images_sha256");
      d_eval_labels = text("eval_labels_sha256");
      d_has_calib = dj.contains("calibration_images_sha256");
      d_calib_images = text("calibration_images_sha256");
      d_calib_labels = text("calibration_labels_sha256");
      if (dj.contains("records")) {
        if (!dj["records"].is_number_unsigned()) throw std::runtime_error("a field of another type");
        d_records = dj["records"].get<size_t>();
      }
      // A DONE.json copied from another shard's folder.
      for (const auto& [key, want] : {std::pair<const char*, int>{"shard", i}, {"shards", shards}}) {
        if (dj.contains(key) && (!dj[key].is_number_integer() || dj[key].get<int64_t>() != want)) {
          throw std::runtime_error("names another shard");
        }
      }
      if (dj.contains("grid_seconds")) {
        if (!dj["grid_seconds"].is_number()) throw std::runtime_error("a field of another type");
        grid_seconds += dj["grid_seconds"].get<double>();
      }
    } catch (const std::exception& e) {
      mismatched.push_back(fmt::format("shard {} (DONE.json {})", i,
                                       std::string(e.what()) == "names another shard" ? "names another shard"
                                                                                       : "is damaged"));
      continue;
    }
    if (d_config != config_sha) mismatched.push_back(fmt::format("shard {} (another config)", i));
    else if (d_model != p->model_sha256) mismatched.push_back(fmt::format("shard {} (another model file)", i));
    else if (d_eval_images != eval_images_sha || d_eval_labels != eval_labels_sha) {
      mismatched.push_back(fmt::format("shard {} (another dataset)", i));
    } else if (!d_has_calib) {
      mismatched.push_back(fmt::format("shard {} (finished by an earlier qsweep)", i));
    } else if (d_calib_images != calib_images_sha || d_calib_labels != calib_labels_sha) {
      mismatched.push_back(fmt::format("shard {} (other calibration data)", i));
    }
    size_t n = 0;
    bool other_size = false;  // one record named is enough
    for (const auto& e : fs::directory_iterator(sdir)) {
      if (e.path().extension() != ".rec" || e.path().filename().string()[0] == '.') continue;
      const std::string bytes = read_file(e.path());
      auto rec = decode_record(bytes);
      if (!rec) {
        mismatched.push_back(fmt::format("shard {} ({} {})", i, e.path().filename().string(),
                                         is_old_record(bytes) ? "was written by an earlier qsweep" : "is corrupted"));
        continue;
      }
      if (!record_fits_batches(*rec, p->cfg.batch_size, p->eval_count)) {
        other_size = true;
        mismatched.push_back(fmt::format("shard {} ({} holds images {}..{}: batches of another size than the {} of "
                                         "'{}')",
                                         i, e.path().filename().string(), rec->begin, rec->begin + rec->images - 1,
                                         p->cfg.batch_size, (work / "config.toml").string()));
        break;
      }
      // A cell of a batch in two shards: records copied from one shard's folder into another.
      bool twice = false;
      for (const int c : rec->cells) {
        const auto [it, fresh] = cell_owner.emplace(std::make_pair(rec->batch, c), i);
        if (!fresh && !twice) {
          twice = true;
          mismatched.push_back(fmt::format("shards {} and {} (both hold cell {} of batch {}: records copied between "
                                           "shard folders?)",
                                           it->second, i, c, rec->batch));
        }
      }
      records.push_back(std::move(*rec));
      ++n;
    }
    if (d_records && *d_records != n && !other_size) {
      mismatched.push_back(fmt::format("shard {} ({} batch files, DONE.json lists {})", i, n, *d_records));
    }
  }
  if (!mismatched.empty()) {
    user_error("cannot merge '{}': {}; rerun those shards", final_dir.string(), fmt::join(mismatched, "; "));
  }
  GridResult grid;
  try {
    grid = assemble_grid(std::move(records), p->g.layers.size(), cfg.quant.weight_bits, p->eval_count, p->cfg.batch_size);
  } catch (const std::runtime_error& e) {
    user_error("cannot merge '{}': {}", final_dir.string(), e.what());
  }
  grid.seconds = grid_seconds;
  json manifest = manifest_json(*p, "qsweep merge " + dir, {}, utc_now(),
                                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  manifest["run_id"] = final_dir.filename().string();
  manifest["shards"] = shards;
  out.folder = finish_layerwise(*p, grid, final_dir, manifest);
  out.config = cfg;
  if (verbose) {
    print_grid(*p, grid);
    fmt::print("merged {} shards: {}\n", shards, out.folder.string());
  }
  out.grid = std::move(grid);
  return out;
}

}  // namespace qsweep
