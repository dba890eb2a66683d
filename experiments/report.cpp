#include "experiments/report.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <toml++/toml.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>
#include <thread>

#include "experiments/csv.h"
#include "experiments/results.h"
#include "runtime/error.h"
#include "runtime/graph.h"
#include "runtime/onnx_import.h"

extern char** environ;

namespace qsweep {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// ---------------------------------------------------------------- files and CSV

void write_into(const fs::path& path, const std::string& content) {
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  if (ec) user_error("cannot create '{}': {}", path.parent_path().string(), ec.message());
  write_file_atomic(path, content);
}

// A JSON object of the folder, or nullopt where the file is absent; a damaged one is an error
// (a figure or table drawn without it would be wrong or missing).
std::optional<json> read_json(const fs::path& p) {
  auto text = read_text(p);
  if (!text) return std::nullopt;
  json j;
  try {
    j = json::parse(*text);
  } catch (const json::exception& e) {
    user_error("{}: not valid JSON ({})", p.string(), e.what());
  }
  if (!j.is_object()) user_error("{}: not a qsweep {} (a JSON object)", p.string(), p.filename().string());
  return j;
}

int integer(const std::string& s) {
  const double v = csv_number(s);
  return std::isfinite(v) ? static_cast<int>(v) : -1;
}

// ---------------------------------------------------------------- the folder's data

struct LayerInfo {
  int index = 0;
  std::string name, op;
};

struct Cell {
  size_t row = 0;  // in layerwise.csv
  double noise = 0, degradation = 0, top1 = 0;
};

struct Results {
  fs::path dir;
  Csv grid;                                   // layerwise.csv
  std::vector<LayerInfo> layers;              // by index (topological order)
  std::vector<int> bits;                      // ascending
  std::map<std::pair<int, int>, Cell> cells;  // (layer, bits)
  double float_top1 = std::nan("");
  long long images = 0;
  std::optional<json> summary, manifest;
  std::optional<Csv> additivity, comparison, layer_stats;
  // The folder part every layer name shares ("resnext26/" in "resnext26/stage1/..."), left
  // out of tick labels so they show what tells the layers apart.
  std::string common_prefix;

  // "12 stage1/unit2/conv1/Conv": index and the shortened name without the common prefix.
  std::string tick_label(const LayerInfo& L) const;

  const Cell* cell(int layer, int b) const {
    const auto it = cells.find({layer, b});
    return it == cells.end() ? nullptr : &it->second;
  }
  const LayerInfo* layer(int index) const {
    for (const auto& L : layers) {
      if (L.index == index) return &L;
    }
    return nullptr;
  }
  // Layers ordered worst first at bit-width b (degradation, then noise, then index), as
  // `qsweep run` orders them.
  std::vector<int> worst_at(int b) const {
    std::vector<int> v;
    for (const auto& L : layers) {
      if (cell(L.index, b)) v.push_back(L.index);
    }
    std::stable_sort(v.begin(), v.end(), [&](int a, int c) {
      const Cell &x = *cell(a, b), &y = *cell(c, b);
      if (x.degradation != y.degradation) return x.degradation > y.degradation;
      if (x.noise != y.noise) return x.noise > y.noise;
      return a < c;
    });
    return v;
  }
};

// What summary.json says the folder holds, against its tables: a table cut at a row boundary
// (or rows deleted) is well-formed, so only the count tells; a table the kind of run writes
// must be there.
void check_against_summary(const fs::path& dir, const Results& r, bool has_grid) {
  if (!r.summary) {
    user_error("'{}' has no summary.json: not a complete qsweep results folder (a run writes it with its tables)",
               dir.string());
  }
  const json& s = *r.summary;
  const std::string kind = s.contains("kind") && s["kind"].is_string() ? s["kind"].get<std::string>() : "";
  auto need = [&](bool present, const char* table) {
    if (!present) user_error("'{}' has no {}, which a kind = \"{}\" run writes (summary.json)", dir.string(), table, kind);
  };
  if (kind == "layerwise" || kind == "additivity") need(has_grid, "layerwise.csv");
  if (kind == "additivity") need(r.additivity.has_value(), "additivity.csv");
  if (kind == "full") need(r.comparison.has_value(), "comparison.csv");
  need(r.layer_stats.has_value(), "layers.csv");  // every kind: the statistics table, the histograms' ranges
  // One layers.csv row per layer summary.json lists (a comparison's: per variant).
  if (s.contains("layers") && s["layers"].is_array()) {
    const size_t listed = s["layers"].size();
    const Csv& t = *r.layer_stats;
    std::map<std::string, std::set<int>> per_variant;
    for (size_t i = 0; i < t.rows.size(); ++i) {
      const std::string variant = t.has("variant") ? t.at(i, "variant") : "";
      const int l = integer(t.at(i, "layer_index"));
      if (l >= static_cast<int>(listed) || !per_variant[variant].insert(l).second) {
        user_error("{}, line {}: {} layer {}, but summary.json lists layers 0..{}; the table was cut or edited",
                   (dir / "layers.csv").string(), t.line[i],
                   l >= static_cast<int>(listed) ? "a row for" : "a second row for", l, listed - 1);
      }
    }
    if (per_variant.empty()) per_variant[""];
    // A comparison's: one group of rows per variant summary.json lists (a cut at a variant's
    // boundary leaves whole groups).
    if (t.has("variant") && s.contains("comparison") && s["comparison"].is_array() &&
        per_variant.size() != s["comparison"].size()) {
      user_error("{}: rows for {} of the {} variants summary.json lists; the table was cut or edited",
                 (dir / "layers.csv").string(), per_variant.size(), s["comparison"].size());
    }
    for (const auto& [variant, seen] : per_variant) {
      if (seen.size() != listed) {
        user_error("{}: rows for {} of the {} layers summary.json lists{}; the table was cut or edited",
                   (dir / "layers.csv").string(), seen.size(), listed,
                   variant.empty() ? "" : fmt::format(" (variant '{}')", variant));
      }
    }
  }
  auto rows = [&](size_t have, const json* listed, const char* table, const char* what) {
    if (listed == nullptr || !listed->is_number_unsigned()) return;
    if (have != listed->get<size_t>()) {
      user_error("{}: {} rows, but summary.json lists {} {}; the table was cut or edited", (dir / table).string(), have,
                 listed->get<size_t>(), what);
    }
  };
  const json grid_size = s.contains("grid") && s["grid"].is_array() ? json(s["grid"].size()) : json();
  if (has_grid) rows(r.grid.rows.size(), &grid_size, "layerwise.csv", "grid cells");
  if (r.additivity && s.contains("additivity") && s["additivity"].is_object() && s["additivity"].contains("configs")) {
    rows(r.additivity->rows.size(), &s["additivity"]["configs"], "additivity.csv", "configurations");
  }
  const json variants = s.contains("comparison") && s["comparison"].is_array() ? json(s["comparison"].size()) : json();
  if (r.comparison) rows(r.comparison->rows.size(), &variants, "comparison.csv", "variants");
  // Every layer at every bit-width: the heatmap and bars have no holes to show.
  std::set<std::pair<int, int>> cells;
  std::set<int> layers, bits;
  for (size_t i = 0; i < r.grid.rows.size(); ++i) {
    const int l = integer(r.grid.at(i, "layer_index")), b = integer(r.grid.at(i, "weight_bits"));
    layers.insert(l);
    bits.insert(b);
    if (!cells.emplace(l, b).second) {
      user_error("{}, line {}: a second row for layer {} at {} bits", (dir / "layerwise.csv").string(), r.grid.line[i],
                 l, b);
    }
  }
  for (const int l : layers) {
    for (const int b : bits) {
      if (!cells.count({l, b})) {
        user_error("{}: no row for layer {} at {} bits; the grid is incomplete", (dir / "layerwise.csv").string(), l, b);
      }
    }
  }
}

Results load_results(const fs::path& dir) {
  Results r;
  r.dir = dir;
  r.additivity = read_csv(dir / "additivity.csv");
  r.comparison = read_csv(dir / "comparison.csv");
  r.layer_stats = read_csv(dir / "layers.csv");
  // A layer-wise or additivity run has a grid; a comparison (kind = "full") has none.
  auto grid = read_csv(dir / "layerwise.csv");
  if (!grid && !r.comparison && !r.additivity) {
    user_error("'{}' has no layerwise.csv, comparison.csv or additivity.csv: not a qsweep results folder",
               dir.string());
  }
  // Tables read back as written by qsweep, else one sentence naming the file, line and column:
  // a cut or hand-edited table would draw wrong figures.
  if (grid) {
    r.grid = std::move(*grid);
    const fs::path file = dir / "layerwise.csv";
    require_columns(r.grid, file, {"layer_index", "layer_name", "op_type", "weight_bits", "noise", "degradation", "top1"});
    require_counts(r.grid, file, {"layer_index", "weight_bits", "act_bits", "correct", "images", "correct5"});
    require_numbers(r.grid, file, {"noise", "sqnr_db"});
    require_finite(r.grid, file, {"top1", "degradation", "float_top1", "top5", "top5_degradation", "float_top5"});
    require_numbers(r.grid, file, {"ci_low", "ci_high", "top5_ci_low", "top5_ci_high"}, /*empty_ok=*/true);
  }
  if (r.additivity) {
    const fs::path file = dir / "additivity.csv";
    require_columns(*r.additivity, file,
                    {"config_index", "low_bits", "high_bits", "num_low_layers", "predicted_degradation",
                     "measured_degradation", "predicted_noise", "measured_noise", "measured_top1"});
    require_counts(*r.additivity, file, {"config_index", "low_bits", "high_bits", "num_low_layers"});
    require_numbers(*r.additivity, file,
                    {"predicted_noise", "measured_noise"});
    require_finite(*r.additivity, file,
                   {"predicted_degradation", "measured_degradation", "measured_top1", "measured_top5"});
    require_numbers(*r.additivity, file, {"ci_low", "ci_high"}, /*empty_ok=*/true);
  }
  if (r.layer_stats) {
    const fs::path file = dir / "layers.csv";
    require_columns(*r.layer_stats, file,
                    {"layer_index", "layer_name", "op_type", "weight_min", "weight_max", "range_min", "range_max",
                     "clip_fraction", "kurtosis", "channel_range_spread"});
    require_counts(*r.layer_stats, file, {"layer_index", "bits"});  // bits: where written (since 2026-11-27)
    require_numbers(*r.layer_stats, file,
                    {"weight_min", "weight_max", "range_min", "range_max", "clip_fraction", "kurtosis",
                     "channel_range_spread"});
  }
  if (r.comparison) {
    const fs::path file = dir / "comparison.csv";
    require_columns(*r.comparison, file, {"variant", "top1", "degradation", "noise"});
    require_numbers(*r.comparison, file,
                    {"noise"});
    require_finite(*r.comparison, file, {"top1", "degradation", "top5", "top5_degradation"});
    require_numbers(*r.comparison, file, {"ci_low", "ci_high", "top5_ci_low", "top5_ci_high"}, /*empty_ok=*/true);
  }
  std::set<int> bits;
  std::map<int, LayerInfo> layers;
  for (size_t i = 0; i < r.grid.rows.size(); ++i) {
    const int li = integer(r.grid.at(i, "layer_index"));
    const int b = integer(r.grid.at(i, "weight_bits"));
    if (li < 0 || b < 1) continue;
    layers[li] = LayerInfo{li, r.grid.at(i, "layer_name"), r.grid.at(i, "op_type")};
    bits.insert(b);
    r.cells[{li, b}] = Cell{i, csv_number(r.grid.at(i, "noise")), csv_number(r.grid.at(i, "degradation")),
                            csv_number(r.grid.at(i, "top1"))};
    if (std::isnan(r.float_top1)) r.float_top1 = csv_number(r.grid.at(i, "float_top1"));
    if (r.images == 0) r.images = integer(r.grid.at(i, "images"));
  }
  for (auto& [i, L] : layers) r.layers.push_back(L);
  r.bits.assign(bits.begin(), bits.end());
  r.summary = read_json(dir / "summary.json");
  r.manifest = read_json(dir / "manifest.json");
  check_against_summary(dir, r, grid.has_value());
  if (r.summary && std::isnan(r.float_top1) && (*r.summary)["float_top1"].is_number()) {
    r.float_top1 = (*r.summary)["float_top1"].get<double>();
  }
  if (r.summary && r.images == 0 && (*r.summary)["images"].is_number_integer()) {
    r.images = (*r.summary)["images"].get<long long>();
  }
  if (r.layers.size() > 1) {
    std::string p = r.layers.front().name;
    for (const auto& L : r.layers) {
      size_t n = 0;
      while (n < p.size() && n < L.name.size() && p[n] == L.name[n]) ++n;
      p.resize(n);
    }
    p.resize(p.rfind('/') == std::string::npos ? 0 : p.rfind('/') + 1);
    bool all_longer = true;
    for (const auto& L : r.layers) all_longer = all_longer && L.name.size() > p.size();
    if (p.size() >= 4 && all_longer) r.common_prefix = p;
  }
  return r;
}

// j[key] for a const JSON value, null where j is no object or has no such key (nlohmann's
// const operator[] on a missing key is undefined behaviour: a crash on a summary.json that
// lacks an optional field).
const json& field(const json& j, const std::string& key) {
  static const json null;
  if (!j.is_object()) return null;
  const auto it = j.find(key);
  return it == j.end() ? null : *it;
}

// ---------------------------------------------------------------- figure text helpers

// A field of a tab-separated data file: no tabs or line breaks; double quotes would start a
// quoted string in gnuplot's tokenizer, and gnuplot's reader drops a single backslash (it
// reads two as one).
std::string tsv_text(const std::string& in) {
  std::string s;
  for (char c : in) {
    if (c == '\t' || c == '\n' || c == '\r') c = ' ';
    if (c == '"') c = '\'';
    if (c == '\\') s += '\\';
    s += c;
  }
  return s.empty() ? "-" : s;
}

// A numeric field copied from a CSV: as written, NaN where the CSV leaves it empty.
std::string tsv_number(const std::string& s) { return s.empty() ? "NaN" : tsv_text(s); }

// Long names shortened in the middle (the end says most: "conv2/Conv"), so a plot keeps its
// width however long the names are.
constexpr size_t kMaxLabelChars = 40;
std::string shorten(const std::string& name) {
  std::string s = name;  // cut first, escaped after: a cut must not split a doubled backslash
  if (s.size() > kMaxLabelChars) {
    const size_t keep = kMaxLabelChars - 1;
    size_t head = keep / 3, tail = keep - head;
    // Never cut inside a UTF-8 sequence.
    while (head > 0 && (static_cast<unsigned char>(s[head]) & 0xC0) == 0x80) --head;
    size_t from = s.size() - tail;
    while (from < s.size() && (static_cast<unsigned char>(s[from]) & 0xC0) == 0x80) ++from;
    s = s.substr(0, head) + "\u2026" + s.substr(from);
  }
  return tsv_text(s);
}

std::string Results::tick_label(const LayerInfo& L) const {
  return fmt::format("{} {}", L.index, shorten(L.name.substr(common_prefix.size())));
}

// A gnuplot double-quoted string literal.
std::string gp_string(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n' || c == '\t') c = ' ';
    out += c;
  }
  return out + "\"";
}

std::string gp_number(double v) { return std::isfinite(v) ? fmt::format("{:.6g}", v) : "NaN"; }

// A plot with one row per layer says, top left, which common prefix its tick labels leave out.
std::string layer_axis_label(const Results& r) {
  if (r.common_prefix.empty()) return "unset label 1\n";
  return fmt::format("set label 1 {} at screen 0.01, screen 0.985 left font small\n",
                     gp_string(fmt::format("layer names after '{}'", r.common_prefix)));
}

// Pixel width of a label of n characters at the 9-pt figure font, generously.
int label_px(size_t n) { return static_cast<int>(n) * 7 + 16; }

size_t utf8_length(const std::string& s) {
  return static_cast<size_t>(std::count_if(s.begin(), s.end(), [](char c) { return (c & 0xC0) != 0x80; }));
}

// Replaces every @KEY@ of `tpl`.
std::string subst(std::string tpl, const std::map<std::string, std::string>& vars) {
  for (const auto& [k, v] : vars) {
    const std::string key = "@" + k + "@";
    for (size_t pos = tpl.find(key); pos != std::string::npos; pos = tpl.find(key, pos + v.size())) {
      tpl.replace(pos, key.size(), v);
    }
  }
  return tpl;
}

struct Figure {
  std::string stem, title, caption;
  std::string dat, gp;
};

// The part every script shares: what it is, the size and font, and the loop that draws the
// same plot once per terminal.
std::string script(const std::string& stem, const std::string& title, int width, int height, const std::string& setup,
                   const std::string& body) {
  return subst(R"GP(# @STEM@.gp: @TITLE@
# Draws @STEM@.png and @STEM@.svg from @STEM@.dat (its columns are named in its first line).
# Restyle by editing this file and running `gnuplot @STEM@.gp` in this folder.
# `qsweep report` rewrites it: keep a restyled copy under another name.
set encoding utf8
set datafile separator "\t"
set datafile commentschars "#"
datafile = "@STEM@.dat"
width = @W@
height = @H@
font = "sans,9"
small = "sans,8"

@SETUP@
do for [term in "pngcairo svg"] {
  if (term eq "pngcairo") {
    set terminal pngcairo size width,height font font noenhanced
    set output "@STEM@.png"
  } else {
    set terminal svg size width,height font font noenhanced background "white"
    set output "@STEM@.svg"
  }
@BODY@
  unset output
}
)GP",
               {{"STEM", stem},
                {"TITLE", title},
                {"W", std::to_string(width)},
                {"H", std::to_string(height)},
                {"SETUP", setup},
                {"BODY", body}});
}

// The degradation colour scale: white at 0, a ramp whose steps grow quadratically up to
// `saturate` (so tenths of a point stay visible next to several points), blues below 0.
// The page's tables use the same stops.
struct Stop {
  double at;  // fraction of `saturate`
  const char* rgb;
};
constexpr std::array<Stop, 13> kDegradationStops{{{-0.2, "#4393c3"},
                                                  {-0.04, "#92c5de"},
                                                  {-0.008, "#d1e5f0"},
                                                  {0.0, "#ffffff"},
                                                  {0.0156, "#ffffcc"},
                                                  {0.0625, "#ffeda0"},
                                                  {0.1406, "#fed976"},
                                                  {0.25, "#feb24c"},
                                                  {0.3906, "#fd8d3c"},
                                                  {0.5625, "#fc4e2a"},
                                                  {0.7656, "#e31a1c"},
                                                  {0.9, "#bd0026"},
                                                  {1.0, "#800026"}}};
constexpr double kWhiteTextFrom = 0.5;  // of `saturate`: cells this dark get white annotations

std::string degradation_palette() {
  std::string s = "set palette defined (";
  for (size_t i = 0; i < kDegradationStops.size(); ++i) {
    s += fmt::format("{}{} * saturate \"{}\"", i ? ", " : "", kDegradationStops[i].at, kDegradationStops[i].rgb);
  }
  return s + ")";
}

// The same scale for HTML: interpolated in RGB.
std::string degradation_rgb(double v, double saturate) {
  const double t = std::clamp(v / saturate, kDegradationStops.front().at, kDegradationStops.back().at);
  size_t i = 1;
  while (i + 1 < kDegradationStops.size() && kDegradationStops[i].at < t) ++i;
  const Stop &a = kDegradationStops[i - 1], &b = kDegradationStops[i];
  const double f = b.at > a.at ? (t - a.at) / (b.at - a.at) : 0.0;
  auto channel = [&](int k) {
    const int x = std::stoi(std::string(a.rgb + 1 + 2 * k, 2), nullptr, 16);
    const int y = std::stoi(std::string(b.rgb + 1 + 2 * k, 2), nullptr, 16);
    return static_cast<int>(std::lround(x + f * (y - x)));
  };
  return fmt::format("#{:02x}{:02x}{:02x}", channel(0), channel(1), channel(2));
}

// ---------------------------------------------------------------- the figures

// Heatmap (the paper's Figure 3): one row per layer in topological order, one column per
// weight bit-width, each cell annotated. Rows rather than columns for layers, so 60+ layer
// names stay horizontal and readable; the figure grows in height instead.
Figure heatmap(const Results& r, bool noise, double saturate) {
  Figure f;
  f.stem = noise ? "heatmap_noise" : "heatmap_degradation";
  f.title =
      noise ? "Output noise (dB) per layer and weight bit-width" : "Top-1 degradation per layer and weight bit-width";
  f.caption = noise ? "Each cell: 10·log10 of the output noise E‖y − ŷ‖² when only that layer is quantized "
                      "(weights at the column's bit-width, activations at 8 bits). Darker is noisier."
                    : fmt::format(
                          "Each cell: top-1 degradation (points) when only that layer is quantized. "
                          "The colour scale saturates at {:g} points; blue cells improved.",
                          saturate);
  const char* metric = noise ? "noise" : "degradation";
  f.dat = fmt::format("# row\tcol\tlayer_index\tweight_bits\t{}\tlabel\tlayer_name\n", metric);
  size_t longest = 0;
  for (size_t row = 0; row < r.layers.size(); ++row) {
    const LayerInfo& L = r.layers[row];
    const std::string label = r.tick_label(L);
    longest = std::max(longest, utf8_length(label));
    for (size_t col = 0; col < r.bits.size(); ++col) {
      const Cell* c = r.cell(L.index, r.bits[col]);
      if (!c) continue;
      f.dat += fmt::format("{}\t{}\t{}\t{}\t{}\t{}\t{}\n", row, col, L.index, r.bits[col], r.grid.at(c->row, metric),
                           label, tsv_text(L.name));
    }
    f.dat += "\n";  // one block per layer: `every ::0::0` picks one line per layer for the ticks
  }
  const int n = static_cast<int>(r.layers.size()), nb = static_cast<int>(r.bits.size());
  const int left = label_px(longest);
  const int width = std::max(600, left + 62 * nb + 150);
  const int height = std::max(300, 19 * n + 150);
  // A colour bar of at most 420 pixels, at the top, however tall the figure.
  const double top = 1.0 - 58.0 / height, bottom = 62.0 / height;
  const double bar = std::min(top - bottom, 420.0 / height);
  std::string frame = fmt::format(
      "nlayers = {}\nnbits = {}\nset lmargin at screen {:.4f}\nset rmargin at screen {:.4f}\n"
      "set yrange [nlayers - 0.5 : -0.5]\nset xrange [-0.5 : nbits - 0.5]\n"
      "set tics scale 0\nset ytics font small\nset xtics font font\nset link x2\nset x2tics font font\n"
      "set xlabel \"weight bits\"\nunset key\nset border lw 0.5\n"
      "set title {}\nset tmargin at screen {:.4f}\nset bmargin at screen {:.4f}\n"
      "set colorbox user origin screen {:.4f}, screen {:.4f} size screen {:.4f}, screen {:.4f}\n",
      n, nb, static_cast<double>(left) / width, 1.0 - 130.0 / width, gp_string(f.title), top, bottom,
      1.0 - 115.0 / width, top - bar, 18.0 / width, bar);
  frame += layer_axis_label(r);
  std::string setup, body;
  if (noise) {
    setup += R"GP(# Noise in dB; a cell without noise (0, -inf dB) is left white.
db(v) = v > 0 ? 10 * log10(v) : NaN
stats datafile using (db($5)) nooutput
lo = STATS_min
hi = STATS_max > STATS_min ? STATS_max : STATS_min + 1
set cbrange [lo : hi]
set palette defined (0 "#ffffff", 0.12 "#ffffcc", 0.3 "#fed976", 0.5 "#fd8d3c", 0.7 "#e31a1c", 1 "#800026")
set cblabel "output noise, dB (10 log10 E||y - ŷ||²)"
dark(v) = db(v) >= lo + 0.6 * (hi - lo)
label(v) = v > 0 ? sprintf("%.1f", db(v)) : "-inf"
cbval(v) = db(v)
)GP";
  } else {
    setup += fmt::format("saturate = {}\n", gp_number(saturate));
    setup += degradation_palette() + "\n";
    setup += R"GP(set cbrange [-0.2 * saturate : saturate]
set cbtics add (sprintf("≥ %g", saturate) saturate, sprintf("≤ %g", -0.2 * saturate) -0.2 * saturate)
set cblabel sprintf("top-1 degradation, points (saturated at %g)", saturate)
dark(v) = v >= )GP" +
             gp_number(kWhiteTextFrom) + R"GP( * saturate
# Degradations are multiples of 100/images: two decimals show them exactly up to 10,000 images.
label(v) = abs(v) < 0.005 ? "0" : sprintf("%.2f", v)
cbval(v) = v > saturate ? saturate : (v < -0.2 * saturate ? -0.2 * saturate : v)
)GP";
  }
  setup += frame;
  body = R"GP(  plot datafile using 2:1:(0.5):(0.5):(cbval($5)) with boxxyerror fs solid 1 noborder lc palette, \
       datafile using 2:1:(dark($5) ? "" : label($5)) with labels font small tc "black", \
       datafile using 2:1:(dark($5) ? label($5) : "") with labels font small tc "white", \
       datafile every ::0::0 using (NaN):1:ytic(6), \
       datafile every :::0::0 using 2:(NaN):xtic(4), \
       datafile every :::0::0 using 2:(NaN):x2tic(4) axes x2y1)GP";
  f.gp = script(f.stem, f.title, width, height, setup, body);
  return f;
}

// Per-layer bars (Figure 1b): degradation and noise of every layer at one bit-width, the
// worst layers in red. Horizontal bars, so long names read without tilting the head.
Figure layer_bars(const Results& r, int bits, int worst) {
  Figure f;
  f.stem = "layer_bars";
  f.title =
      fmt::format("Per-layer degradation and output noise at {}-bit weights (red: the {} worst layers)", bits, worst);
  f.caption = fmt::format(
      "Each bar: that layer alone quantized (weights at {} bits, activations at 8 bits). "
      "The {} worst layers by degradation are red.",
      bits, worst);
  const auto order = r.worst_at(bits);
  std::map<int, int> rank;
  for (size_t i = 0; i < order.size() && i < static_cast<size_t>(worst); ++i) rank[order[i]] = static_cast<int>(i) + 1;
  const bool ci = r.grid.has("ci_low") && r.grid.has("ci_high");
  if (ci) f.caption += " Whiskers: the degradation's confidence interval.";
  f.dat = "# row\tlayer_index\tweight_bits\tdegradation\tnoise\tworst_rank\tlabel\tlayer_name\tci_low\tci_high\n";
  size_t longest = 0;
  int row = 0;
  for (const LayerInfo& L : r.layers) {
    const Cell* c = r.cell(L.index, bits);
    if (!c) continue;
    const std::string label = r.tick_label(L);
    longest = std::max(longest, utf8_length(label));
    f.dat +=
        fmt::format("{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n", row++, L.index, bits, r.grid.at(c->row, "degradation"),
                    r.grid.at(c->row, "noise"), rank.count(L.index) ? rank[L.index] : 0, label, tsv_text(L.name),
                    tsv_number(r.grid.at(c->row, "ci_low")), tsv_number(r.grid.at(c->row, "ci_high")));
  }
  const int left = label_px(longest);
  const int width = std::max(900, left + 2 * 380);
  const int height = std::max(300, 19 * row + 140);
  const double split = left + (width - left) * 0.5;
  std::string setup = fmt::format(
      R"GP(nlayers = {}
bits = {}
plain = 0x8fa9c8   # bar colours: other layers, worst layers
worst = 0xd62728
set yrange [nlayers - 0.5 : -0.5]
set tics scale 0.5
set ytics scale 0 font small
set grid xtics lc "gray85" lw 0.5
set border 3 lw 0.5
unset key
set offsets 0, graph 0.14, 0, 0   # room for the value labels right of the bars
set tmargin 5
set bmargin 4
set link x2   # the value axis at the top too: the figure is tall
set x2tics
colour(rank) = rank > 0 ? worst : plain
# Value labels start right of the bar, its whisker and the zero line.
label_x(v, hi) = (hi == hi && hi > v ? hi : v) > 0 ? (hi == hi && hi > v ? hi : v) : 0
)GP",
      row, bits);
  const std::string body = fmt::format(
      R"GP(  set multiplot title {}
  {}  set lmargin at screen {:.4f}
  set rmargin at screen {:.4f}
  set xlabel "top-1 degradation (points)"
  set format y "%g"
  set xrange [*:*]
  plot datafile using (0):1:(0):4:($1 - 0.38):($1 + 0.38):(colour($6)) with boxxyerror fs solid 1 noborder lc rgb variable, \
{}       datafile using (label_x($4, $10)):1:(sprintf(" %.2f", $4)) with labels left font small, \
       datafile using (NaN):1:ytic(7)
  set lmargin at screen {:.4f}
  set rmargin at screen {:.4f}
  set xlabel "output noise E||y - ŷ||²"
  set ytics format ""
  unset label 1
  plot datafile using (0):1:(0):5:($1 - 0.38):($1 + 0.38):(colour($6)) with boxxyerror fs solid 1 noborder lc rgb variable, \
       datafile using 5:1:(sprintf(" %.3g", $5)) with labels left font small
  set ytics format "%g"
  unset multiplot)GP",
      gp_string(f.title), layer_axis_label(r), static_cast<double>(left) / width, (split - 20) / width,
      ci ? "       datafile using 4:1:9:10 with xerrorbars pt -1 lw 0.8 lc \"gray20\", \\\n" : "", (split + 20) / width,
      1.0 - 30.0 / width);
  f.gp = script(f.stem, f.title, width, height, setup, body);
  return f;
}

// Noise against degradation for every cell, one colour per bit-width.
Figure noise_vs_degradation(const Results& r) {
  Figure f;
  f.stem = "noise_vs_degradation";
  f.title = "Output noise vs top-1 degradation, every (layer, bit-width) cell";
  f.caption =
      "Each point: one layer quantized at one weight bit-width. Noise is on a log scale; "
      "cells without noise are left out.";
  // The five most degrading cells (degradation, then noise) get their layer index as a label.
  constexpr size_t kLabelled = 5;
  std::vector<std::pair<int, int>> order;
  for (const auto& [key, c] : r.cells) {
    if (c.degradation > 0) order.push_back(key);
  }
  std::stable_sort(order.begin(), order.end(), [&](const auto& a, const auto& b) {
    const Cell &x = r.cells.at(a), &y = r.cells.at(b);
    return x.degradation != y.degradation ? x.degradation > y.degradation : x.noise > y.noise;
  });
  if (order.size() > kLabelled) order.resize(kLabelled);
  f.caption += " The most degrading cells are labelled with their layer index.";
  f.dat = "# layer_index\tweight_bits\tnoise\tdegradation\tlabel_rank\tlayer_name\n";
  std::string titles;
  for (size_t i = 0; i < r.bits.size(); ++i) {
    if (i) f.dat += "\n\n";  // one data set per bit-width: `index i`
    titles += fmt::format("{}{}-bit", i ? " " : "", r.bits[i]);
    for (const LayerInfo& L : r.layers) {
      const Cell* c = r.cell(L.index, r.bits[i]);
      if (!c) continue;
      const auto it = std::find(order.begin(), order.end(), std::make_pair(L.index, r.bits[i]));
      f.dat += fmt::format("{}\t{}\t{}\t{}\t{}\t{}\n", L.index, r.bits[i], r.grid.at(c->row, "noise"),
                           r.grid.at(c->row, "degradation"), it == order.end() ? 0 : it - order.begin() + 1,
                           tsv_text(L.name));
    }
  }
  // Colours in bit-width order, red (fewest bits) to purple (most), all dark enough on white.
  static constexpr std::array<const char*, 6> kOrdered{"#b2182b", "#e66101", "#b8860b",
                                                       "#1b7837", "#2166ac", "#542788"};
  std::string colours;
  for (size_t i = 0; i < r.bits.size(); ++i) {
    const size_t k = r.bits.size() <= kOrdered.size()
                         ? i * (kOrdered.size() - 1) / std::max<size_t>(1, r.bits.size() - 1)
                         : i % kOrdered.size();
    colours += fmt::format("{}{}", i ? " " : "", kOrdered[k]);
  }
  const std::string setup = fmt::format(R"GP(nsets = {}
titles = "{}"
colours = "{}"
set logscale x
set format x "1e%T"
set xlabel "output noise E||y - ŷ||² (log scale)"
set ylabel "top-1 degradation (points)"
set grid lc "gray85" lw 0.5
set key top left box opaque
set title {}
set xzeroaxis lc "gray50" dt 2
set autoscale xfix
set offsets graph 0.03, graph 0.08, graph 0.06, graph 0.02   # room for the labels at the edges
)GP",
                                        r.bits.size(), titles, colours, gp_string(f.title));
  const std::string body =
      R"GP(  plot for [i = 0 : nsets - 1] datafile index i using ($3 > 0 ? $3 : NaN):4 with points pt 7 ps 0.9 lc rgb word(colours, i + 1) title word(titles, i + 1), \
       for [i = 0 : nsets - 1] datafile index i using ($3 > 0 ? $3 : NaN):4:($5 > 0 ? sprintf("%d", $1) : "") with labels left offset 0.6, 0.3 font small tc "gray20" notitle)GP";
  f.gp = script(f.stem, f.title, 820, 560, setup, body);
  return f;
}

// Which quantity an additivity/comparison CI brackets: "degradation", "top1" or "none".
std::string ci_kind(const Csv& csv, const char* deg_col, const char* top1_col) {
  if (!csv.has("ci_low") || !csv.has("ci_high")) return "none";
  int deg = 0, top = 0, n = 0;
  for (size_t i = 0; i < csv.rows.size(); ++i) {
    const double lo = csv_number(csv.at(i, "ci_low")), hi = csv_number(csv.at(i, "ci_high"));
    if (!std::isfinite(lo) || !std::isfinite(hi)) continue;
    ++n;
    const double d = csv_number(csv.at(i, deg_col)), t = csv_number(csv.at(i, top1_col));
    if (lo <= d + 1e-9 && d <= hi + 1e-9)
      ++deg;
    else if (lo <= t + 1e-9 && t <= hi + 1e-9)
      ++top;
  }
  if (n == 0) return "none";
  if (deg * 2 > n) return "degradation";
  if (top * 2 > n) return "top1";
  return "none";
}

// Pearson r and least-squares slope (with intercept) of y on x.
std::pair<double, double> fit(const std::vector<double>& x, const std::vector<double>& y) {
  const double n = static_cast<double>(x.size());
  if (x.size() < 2) return {std::nan(""), std::nan("")};
  double mx = 0, my = 0;
  for (size_t i = 0; i < x.size(); ++i) mx += x[i] / n, my += y[i] / n;
  double sxx = 0, syy = 0, sxy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
    sxy += (x[i] - mx) * (y[i] - my);
  }
  return {sxy / std::sqrt(sxx * syy), sxy / sxx};
}

// Additivity (Figures 2 and 9): predicted (sum of single-layer effects) vs measured.
Figure additivity(const Results& r, bool noise) {
  const Csv& a = *r.additivity;
  const std::string pred = noise ? "predicted_noise" : "predicted_degradation";
  const std::string meas = noise ? "measured_noise" : "measured_degradation";
  Figure f;
  f.stem = noise ? "additivity_noise" : "additivity_degradation";
  f.title = noise ? "Additivity of noise: predicted vs measured output noise"
                  : "Additivity of degradation: predicted vs measured top-1 degradation";
  std::vector<double> xs, ys;
  double lo = 0, hi = 0;
  f.dat = fmt::format("# config_index\tlow_bits\thigh_bits\tnum_low_layers\t{}\t{}\tmeasured_top1\tci_low\tci_high\n",
                      pred, meas);
  for (size_t i = 0; i < a.rows.size(); ++i) {
    const double x = csv_number(a.at(i, pred)), y = csv_number(a.at(i, meas));
    f.dat += fmt::format("{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n", tsv_text(a.at(i, "config_index")),
                         tsv_text(a.at(i, "low_bits")), tsv_text(a.at(i, "high_bits")),
                         tsv_text(a.at(i, "num_low_layers")), tsv_text(a.at(i, pred)), tsv_text(a.at(i, meas)),
                         tsv_text(a.at(i, "measured_top1")), tsv_text(a.at(i, "ci_low")), tsv_text(a.at(i, "ci_high")));
    if (!std::isfinite(x) || !std::isfinite(y)) continue;
    xs.push_back(x);
    ys.push_back(y);
    lo = std::min({lo, x, y});
    hi = std::max({hi, x, y});
    if (!noise) {  // keep the confidence intervals inside the plot
      const double cl = csv_number(a.at(i, "ci_low")), ch = csv_number(a.at(i, "ci_high")),
                   t = csv_number(a.at(i, "measured_top1"));
      if (std::isfinite(cl) && std::isfinite(ch)) {
        const bool of_top1 = !(cl <= y + 1e-9 && y <= ch + 1e-9) && std::isfinite(t) && cl <= t && t <= ch;
        lo = std::min(lo, of_top1 ? r.float_top1 - ch : cl);
        hi = std::max(hi, of_top1 ? r.float_top1 - cl : ch);
      }
    }
  }
  // r and slope as the additivity experiment reported them; computed here only when absent.
  auto [pr, slope] = fit(xs, ys);
  std::string source = "computed by qsweep report";
  if (r.summary && r.summary->contains("additivity")) {
    const json& s = field(field(*r.summary, "additivity"), noise ? "noise" : "degradation");
    if (field(s, "pearson_r").is_number() && field(s, "slope").is_number()) {
      pr = field(s, "pearson_r").get<double>();
      slope = field(s, "slope").get<double>();
      source = "from summary.json";
    }
  }
  const std::string ci = noise ? "none" : ci_kind(a, meas.c_str(), "measured_top1");
  f.caption = fmt::format(
      "Each point: one configuration (a random subset of layers at the low bit-width, the rest "
      "at the high one), coloured by how many layers are at the low bit-width. Dashed: y = x. "
      "r and slope {}.{}",
      source, ci != "none" ? " Bars: the confidence interval of the measured degradation." : "");
  const double pad = 0.05 * (hi - lo > 0 ? hi - lo : 1.0);
  // Layer counts are integers: whole-number colour-bar steps, about eight of them.
  int max_low = 1;
  for (size_t i = 0; i < a.rows.size(); ++i) max_low = std::max(max_low, integer(a.at(i, "num_low_layers")));
  const int cb_step = std::max(1, (max_low + 7) / 8);
  const std::string quantity = noise ? "output noise E||y - ŷ||²" : "top-1 degradation, points";
  const std::string setup = fmt::format(
      R"GP(r = {}
slope = {}
float_top1 = {}
ci = "{}"   # what ci_low/ci_high bracket: degradation, top1 or none
set title {}
set xlabel "predicted {} (sum of single-layer values)"
set ylabel "measured {}"
set xrange [{} : {}]
set yrange [{} : {}]
set cbtics {}
set size ratio -1
set grid lc "gray85" lw 0.5
set key top left box opaque Left reverse
set cblabel "layers at the low bit-width"
set palette defined (0 "#4575b4", 0.5 "#fdae61", 1 "#a50026")
ci_lo(lo, hi) = ci eq "degradation" ? lo : ci eq "top1" ? float_top1 - hi : NaN
ci_hi(lo, hi) = ci eq "degradation" ? hi : ci eq "top1" ? float_top1 - lo : NaN
)GP",
      gp_number(pr), gp_number(slope), gp_number(r.float_top1), ci, gp_string(f.title), quantity, quantity,
      gp_number(lo - pad), gp_number(hi + pad), gp_number(lo - pad), gp_number(hi + pad), cb_step);
  const std::string body = fmt::format(
      R"GP(  plot x with lines dt 2 lc "gray40" title "y = x", \
       datafile using 5:6:(ci_lo($8, $9)):(ci_hi($8, $9)) with yerrorbars pt -1 lc "gray60" notitle, \
       datafile using 5:6:4 with points pt 7 ps 1.1 lc palette title sprintf("measured (r = %.3f, slope = %.3f)", r, slope))GP");
  f.gp = script(f.stem, f.title, 720, 640, setup, body);
  return f;
}

// Comparison (Table 1 as a chart): degradation of each variant, CI bars, top-1 beside.
Figure comparison(const Results& r) {
  const Csv& c = *r.comparison;
  Figure f;
  f.stem = "comparison";
  f.title = "Comparison: top-1 degradation of each variant";
  const std::string ci = ci_kind(c, "degradation", "top1");
  f.caption = std::string("Each bar: the whole network quantized as the variant describes (see the table). ") +
              (ci != "none" ? "Error bars: the confidence interval. " : "") + "The label gives the top-1 accuracy.";
  f.dat = "# row\tvariant\ttop1\tdegradation\tnoise\tci_low\tci_high\tlabel\n";
  size_t longest = 0;
  for (size_t i = 0; i < c.rows.size(); ++i) {
    const std::string label = shorten(c.at(i, "variant"));  // escaped by shorten(), once
    longest = std::max(longest, utf8_length(label));
    f.dat += fmt::format("{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\n", i, tsv_text(c.at(i, "variant")), tsv_text(c.at(i, "top1")),
                         tsv_text(c.at(i, "degradation")), tsv_text(c.at(i, "noise")), tsv_text(c.at(i, "ci_low")),
                         tsv_text(c.at(i, "ci_high")), label);
  }
  const int n = static_cast<int>(c.rows.size());
  const int left = label_px(longest);
  const int width = std::max(760, left + 560);
  const int height = std::max(260, 34 * n + 150);
  const std::string setup = fmt::format(
      R"GP(nrows = {}
float_top1 = {}
ci = "{}"   # what ci_low/ci_high bracket: degradation, top1 or none
set title {}
set lmargin at screen {:.4f}
set yrange [nrows - 0.5 : -0.5]
set ytics scale 0
set xlabel sprintf("top-1 degradation (points; float32 top-1 %.2f%%)", float_top1)
set grid xtics lc "gray85" lw 0.5
set border 3 lw 0.5
set offsets 0, graph 0.25, 0, 0
unset key
ci_lo(lo, hi) = ci eq "degradation" ? lo : ci eq "top1" ? float_top1 - hi : NaN
ci_hi(lo, hi) = ci eq "degradation" ? hi : ci eq "top1" ? float_top1 - lo : NaN
)GP",
      n, gp_number(r.float_top1), ci, gp_string(f.title), static_cast<double>(left) / width);
  const std::string body =
      R"GP(  plot datafile using (0):1:(0):4:($1 - 0.3):($1 + 0.3) with boxxyerror fs solid 1 noborder lc "#6b8fb5", \
       datafile using 4:1:(ci_lo($6, $7)):(ci_hi($6, $7)) with xerrorbars pt -1 lc "black", \
       datafile using ($4 > ci_hi($6, $7) || ci eq "none" ? $4 : ci_hi($6, $7)):1:(sprintf("  top-1 %.2f%%", $3)) with labels left font small, \
       datafile using (NaN):1:ytic(8))GP";
  f.gp = script(f.stem, f.title, width, height, setup, body);
  return f;
}

struct WeightLayer {
  int index = 0;
  std::string name;
  std::vector<float> w;
  double range_lo = 0, range_hi = 0;  // the quantization range at the lowest bit-width
  std::string range_source;           // "layers.csv" or how it was derived
  double kurtosis = std::nan("");
  double degradation = std::nan("");
};

std::optional<std::vector<float>> read_f32(const fs::path& p) {
  const auto text = read_text_if_readable(p);  // unreadable: the model's weights serve instead
  if (!text || text->size() % 4 != 0 || text->empty()) return std::nullopt;
  static_assert(std::endian::native == std::endian::little, "weights/*.f32 are little-endian float32");
  std::vector<float> v(text->size() / 4);
  std::memcpy(v.data(), text->data(), text->size());
  return v;
}

// Weight histograms of the worst layers (Figure 6), log-scale counts, with the quantization
// range (and the weights' own min/max where the range clips them) as vertical lines.
Figure weight_histogram(const Results& r, const std::vector<WeightLayer>& layers, int bits) {
  constexpr int kBins = 121;  // odd, so a symmetric range has a bin centred on 0
  Figure f;
  f.stem = "weight_histogram";
  f.title = fmt::format("Weight distribution of the {} worst layers at {}-bit weights", layers.size(), bits);
  f.caption =
      "Histogram of each layer's (BatchNorm-folded) float32 weights, counts on a log scale. Dash-dot: the "
      "quantization range at the lowest bit-width; dotted: the weights' min and max where the range clips "
      "them.";
  f.dat = "# one data set per layer (gnuplot `index k`): bin_center\tbin_low\tbin_high\tcount\n";
  std::string panels;
  for (size_t k = 0; k < layers.size(); ++k) {
    const WeightLayer& L = layers[k];
    const auto [mn, mx] = std::minmax_element(L.w.begin(), L.w.end());
    const double wmin = *mn, wmax = *mx;
    double lo = std::min(wmin, L.range_lo), hi = std::max(wmax, L.range_hi);
    const double margin = 0.03 * (hi - lo > 0 ? hi - lo : 1.0);
    lo -= margin;
    hi += margin;
    const double step = (hi - lo) / kBins;
    std::vector<long long> count(kBins, 0);
    for (float x : L.w) count[std::clamp(static_cast<int>((x - lo) / step), 0, kBins - 1)]++;
    if (k) f.dat += "\n\n";
    f.dat += fmt::format("# layer {} {} ({} weights; min {:.9g}, max {:.9g}; range [{:.9g}, {:.9g}] from {})\n",
                         L.index, tsv_text(L.name), L.w.size(), wmin, wmax, L.range_lo, L.range_hi, L.range_source);
    for (int b = 0; b < kBins; ++b) {
      f.dat += fmt::format("{:.9g}\t{:.9g}\t{:.9g}\t{}\n", lo + (b + 0.5) * step, lo + b * step, lo + (b + 1) * step,
                           count[b]);
    }
    // Clipped: the range leaves weights out (beyond the rounding of a range read from CSV).
    const double tol = 1e-6 * (hi - lo);
    const long long top = *std::max_element(count.begin(), count.end());
    std::string sub = fmt::format("{} weights", L.w.size());
    if (std::isfinite(L.degradation)) sub += fmt::format(", degradation {:.2f} pts at {} bits", L.degradation, bits);
    if (std::isfinite(L.kurtosis)) sub += fmt::format(", kurtosis {:.3g}", L.kurtosis);
    sub += fmt::format("; range: {}", L.range_source);
    panels += fmt::format(
        R"GP(
  # panel {k}: layer {index}. Each vertical line is labelled at its top, the text inside the plot.
  unset arrow
  unset label
  set yrange [0.7 : {ytop}]   # headroom for the labels
  set xrange [{xlo} : {xhi}]
  set title {title}
  set arrow from {rlo}, graph 0 to {rlo}, graph 1 nohead dt "-." lw 1.5 lc rgb range_colour front
  set arrow from {rhi}, graph 0 to {rhi}, graph 1 nohead dt "-." lw 1.5 lc rgb range_colour front
  set label {llo} at {rlo}, graph 0.93 left offset 0.5, 0 tc rgb range_colour front
  set label {lhi} at {rhi}, graph 0.93 right offset -0.5, 0 tc rgb range_colour front
)GP",
        fmt::arg("k", k), fmt::arg("index", L.index), fmt::arg("ytop", std::max<long long>(20, top * 12)),
        // Room beyond a clipped weight extreme for its label.
        fmt::arg("xlo", gp_number(lo - (wmin < L.range_lo - tol ? 0.2 * (hi - lo) : 0.0))),
        fmt::arg("xhi", gp_number(hi + (wmax > L.range_hi + tol ? 0.2 * (hi - lo) : 0.0))),
        fmt::arg("title", gp_string(fmt::format("layer {} {} ({})", L.index, L.name, sub))),
        fmt::arg("rlo", gp_number(L.range_lo)), fmt::arg("rhi", gp_number(L.range_hi)),
        fmt::arg("llo", gp_string(fmt::format("range min {:.4g}", L.range_lo))),
        fmt::arg("lhi", gp_string(fmt::format("range max {:.4g}", L.range_hi))));
    // Where the range clips, the weights' own extreme too, labelled outside the range.
    if (wmin < L.range_lo - tol) {
      panels += fmt::format(
          "  set arrow from {0}, graph 0 to {0}, graph 1 nohead dt 3 lw 1.5 lc rgb weight_colour front\n"
          "  set label {1} at {0}, graph 0.8 right offset -0.5, 0 tc rgb weight_colour front\n",
          gp_number(wmin), gp_string(fmt::format("weight min {:.4g}", wmin)));
    }
    if (wmax > L.range_hi + tol) {
      panels += fmt::format(
          "  set arrow from {0}, graph 0 to {0}, graph 1 nohead dt 3 lw 1.5 lc rgb weight_colour front\n"
          "  set label {1} at {0}, graph 0.8 left offset 0.5, 0 tc rgb weight_colour front\n",
          gp_number(wmax), gp_string(fmt::format("weight max {:.4g}", wmax)));
    }
    panels += fmt::format(
        "  plot datafile index {} using 1:($4 > 0 ? $4 : NaN):($3 - $2) with boxes fs solid 0.75 noborder lc "
        "rgb bar_colour notitle\n",
        k);
  }
  const int n = static_cast<int>(layers.size());
  const std::string setup = R"GP(bar_colour = "#4a7ab5"
range_colour = "#d62728"   # the quantization range (dash-dot)
weight_colour = "gray30"   # the weights' min and max where the range clips them (dotted)
set logscale y
set ylabel "count (log scale)"
set xlabel "weight value"
set grid lc "gray85" lw 0.5
unset key
set tics font small
)GP";
  const std::string body =
      fmt::format("  set multiplot layout {}, 1 title {}", n, gp_string(f.title)) + panels + "  unset multiplot";
  f.gp = script(f.stem, f.title, 900, 300 * n + 40, setup, body);
  return f;
}

// The worst layers' weights: weights/<i>.f32, saved from `graph` or the manifest's model
// when missing; ranges from layers.csv or the scheme's min/max rule.
std::vector<WeightLayer> worst_layer_weights(const Results& r, const std::vector<int>& worst, int bits,
                                             const Graph* graph, std::vector<std::string>& warnings) {
  std::vector<WeightLayer> out;
  std::optional<Graph> imported;
  auto model_weights = [&](int index) -> const std::vector<float>* {
    if (!graph && !imported && r.manifest) {
      const json& m = field(*r.manifest, "model");
      if (field(m, "path").is_string()) {
        const std::string path = field(m, "path").get<std::string>();
        std::error_code ec;
        if (fs::is_regular_file(path, ec)) {
          try {
            imported = import_onnx(path);
          } catch (const std::exception& e) {
            warnings.push_back(fmt::format("weight histogram: cannot read the model '{}': {}", path, e.what()));
          }
        }
      }
      if (!imported) imported.emplace();  // tried once
    }
    const Graph* g = graph ? graph : (imported && !imported->layers.empty() ? &*imported : nullptr);
    if (!g || index < 0 || index >= static_cast<int>(g->layers.size())) return nullptr;
    const Layer& L = g->layers[index];
    const LayerInfo* info = r.layer(index);
    if (info && info->name != L.name) return nullptr;  // not the model this folder came from
    return &g->constant(L.weight_value).data;
  };
  const std::string scheme =
      r.summary && field(*r.summary, "scheme").is_string() ? field(*r.summary, "scheme").get<std::string>() : "asymmetric";
  for (int index : worst) {
    WeightLayer W;
    W.index = index;
    const LayerInfo* info = r.layer(index);
    W.name = info ? info->name : std::to_string(index);
    if (const Cell* c = r.cell(index, bits)) W.degradation = c->degradation;
    const fs::path file = r.dir / "weights" / fmt::format("{}.f32", index);
    if (auto w = read_f32(file)) {
      W.w = std::move(*w);
    } else if (const auto* mw = model_weights(index)) {
      W.w = *mw;
      std::string bytes(W.w.size() * 4, '\0');
      std::memcpy(bytes.data(), W.w.data(), bytes.size());
      write_into(file, bytes);
    } else {
      continue;
    }
    if (W.w.empty()) continue;
    const auto [mn, mx] = std::minmax_element(W.w.begin(), W.w.end());
    bool from_csv = false;
    if (r.layer_stats) {
      const Csv& s = *r.layer_stats;
      for (size_t i = 0; i < s.rows.size(); ++i) {
        if (integer(s.at(i, "layer_index")) != index) continue;
        const double lo = csv_number(s.at(i, "range_min")), hi = csv_number(s.at(i, "range_max"));
        W.kurtosis = csv_number(s.at(i, "kurtosis"));
        if (std::isfinite(lo) && std::isfinite(hi)) {
          W.range_lo = lo;
          W.range_hi = hi;
          const int at = integer(s.at(i, "bits"));
          W.range_source = at > 0 ? fmt::format("layers.csv, {}-bit", at) : "layers.csv";
          from_csv = true;
        }
      }
    }
    if (!from_csv) {
      // method.md: asymmetric [min(w, 0), max(w, 0)]; symmetric [-max|w|, max|w|]. Per
      // channel, the widest channel spans the same envelope.
      if (scheme == "symmetric") {
        const double m = std::max(std::abs(*mn), std::abs(*mx));
        W.range_lo = -m;
        W.range_hi = m;
      } else {
        W.range_lo = std::min(0.0, static_cast<double>(*mn));
        W.range_hi = std::max(0.0, static_cast<double>(*mx));
      }
      W.range_source = scheme + " min/max";
    }
    out.push_back(std::move(W));
  }
  return out;
}

// ---------------------------------------------------------------- running gnuplot

struct GnuplotRun {
  enum class Status { kOk, kNotFound, kFailed, kTimedOut } status = Status::kOk;
  std::string message;  // first line of gnuplot's error output, or why it did not run
};

// Runs `program script` inside `dir` with stdin and stdout on /dev/null, stderr to a file,
// killed after `timeout_s`.
GnuplotRun run_gnuplot(const std::string& program, const fs::path& relative_dir, const std::string& script_name,
                       int timeout_s) {
  GnuplotRun out;
  // Absolute: the child changes into `dir` before it opens the error file, so a relative
  // path would resolve twice (and the spawn fail as if gnuplot were missing).
  const fs::path dir = fs::absolute(relative_dir);
  const fs::path err_file = dir / fmt::format(".gnuplot-{}.err", getpid());
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addchdir_np(&fa, dir.c_str());
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  std::string prog = program, arg = script_name;
  char* argv[] = {prog.data(), arg.data(), nullptr};
  pid_t pid = 0;
  const int rc = posix_spawnp(&pid, prog.c_str(), &fa, nullptr, argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    std::error_code ec;
    fs::remove(err_file, ec);
    out.status = rc == ENOENT || rc == EACCES ? GnuplotRun::Status::kNotFound : GnuplotRun::Status::kFailed;
    out.message = std::strerror(rc);
    return out;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  int status = 0;
  while (true) {
    const pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) break;
    if (w < 0 && errno != EINTR) {
      out.status = GnuplotRun::Status::kFailed;
      out.message = std::strerror(errno);
      return out;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      out.status = GnuplotRun::Status::kTimedOut;
      out.message = fmt::format("still running after {} s; stopped", timeout_s);
      std::error_code ec;
      fs::remove(err_file, ec);
      return out;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const std::string err = read_text(err_file).value_or("");
  std::error_code ec;
  fs::remove(err_file, ec);
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return out;
  out.status = GnuplotRun::Status::kFailed;
  // gnuplot echoes the offending line, then "script, line N: message": keep the message.
  std::string line;
  std::istringstream lines(err);
  for (std::string l; std::getline(lines, l);) {
    if (l.find_first_not_of(" ^\t") == std::string::npos) continue;
    line = l;
    if (l.find("line ") != std::string::npos && l.find(':') != std::string::npos) break;
  }
  out.message = !line.empty()       ? line
                : WIFEXITED(status) ? fmt::format("exit code {}", WEXITSTATUS(status))
                                    : fmt::format("killed by signal {}", WTERMSIG(status));
  return out;
}

// Both images exist and start like a PNG / an SVG.
bool images_ok(const fs::path& figures, const std::string& stem) {
  // Unreadable: a figure that failed, with a warning.
  const auto png = read_text_if_readable(figures / (stem + ".png"));
  const auto svg = read_text_if_readable(figures / (stem + ".svg"));
  return png && png->size() > 8 && png->compare(0, 8, "\x89PNG\r\n\x1a\n") == 0 && svg &&
         svg->find("<svg") != std::string::npos && svg->find("</svg>") != std::string::npos;
}

// ---------------------------------------------------------------- report.html

std::string json_text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  if (v.is_array()) {
    std::string s;
    for (const auto& e : v) s += (s.empty() ? "" : " ") + json_text(e);
    return s;
  }
  return v.dump();
}

// A JSON object as rows "a.b.c" -> value.
void flatten(const json& v, const std::string& prefix, std::vector<std::pair<std::string, std::string>>& out) {
  if (v.is_object()) {
    for (const auto& [k, x] : v.items()) flatten(x, prefix.empty() ? k : prefix + "." + k, out);
  } else {
    out.emplace_back(prefix, json_text(v));
  }
}

std::string csv_table(const Csv& csv, const std::string& id) {
  std::string s = fmt::format("<div class=\"scroll\"><table id=\"{}\"><thead><tr>", id);
  for (const auto& h : csv.header) s += "<th>" + html_escape(h) + "</th>";
  s += "</tr></thead><tbody>\n";
  for (const auto& row : csv.rows) {
    s += "<tr>";
    for (const auto& v : row) {
      const bool numeric = !v.empty() && std::isfinite(csv_number(v)) ? true : v == "inf" || v == "-inf";
      s += numeric ? "<td class=\"n\">" : "<td>";
      s += html_escape(v) + "</td>";
    }
    s += "</tr>\n";
  }
  return s + "</tbody></table></div>\n";
}

// The grid as a layers x bits table, cells coloured like the heatmap.
std::string grid_table(const Results& r, bool noise, double saturate) {
  std::string s = "<div class=\"scroll\"><table class=\"grid\"><thead><tr><th>#</th><th>layer</th><th>op</th>";
  for (int b : r.bits) s += fmt::format("<th>{}-bit</th>", b);
  s += "</tr></thead><tbody>\n";
  for (const LayerInfo& L : r.layers) {
    s += fmt::format("<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td>", L.index, html_escape(L.name),
                     html_escape(L.op));
    for (int b : r.bits) {
      const Cell* c = r.cell(L.index, b);
      if (!c) {
        s += "<td></td>";
      } else if (noise) {
        s += fmt::format("<td class=\"n\">{}</td>", html_escape(r.grid.at(c->row, "noise")));
      } else {
        const std::string bg = degradation_rgb(c->degradation, saturate);
        const bool dark = c->degradation >= kWhiteTextFrom * saturate;
        s += fmt::format("<td class=\"n\" style=\"background:{}{}\">{}</td>", bg, dark ? ";color:#fff" : "",
                         html_escape(r.grid.at(c->row, "degradation")));
      }
    }
    s += "</tr>\n";
  }
  return s + "</tbody></table></div>\n";
}


constexpr const char* kCss = R"GP(
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1180px;
       padding: 1.5em 2em 4em; color: #1d2330; }
h1 { font-size: 1.6em; margin-bottom: 0.1em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccd; }
h3 { margin-bottom: 0.3em; }
.sub { color: #556; margin-top: 0; }
.big { font-size: 1.25em; } .big b { font-size: 1.3em; }
code, pre { font: 13px/1.4 ui-monospace, "DejaVu Sans Mono", monospace; background: #f3f4f8; }
pre { padding: 0.7em 1em; overflow-x: auto; border-radius: 4px; }
table { border-collapse: collapse; font-size: 13px; margin: 0.4em 0; }
th, td { border: 1px solid #d5d8e0; padding: 2px 7px; text-align: left; vertical-align: top; }
th { background: #eef0f5; position: sticky; top: 0; }
td.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.kv td:first-child { white-space: nowrap; color: #445; }
.scroll { max-height: 36em; overflow: auto; display: inline-block; max-width: 100%; }
figure { margin: 1em 0 2.5em; }
figure img { max-width: 100%; height: auto; border: 1px solid #dde; }
figcaption { color: #445; font-size: 14px; max-width: 60em; }
.files { font-size: 13px; color: #556; }
.note { background: #fff6d6; border: 1px solid #f0d77a; padding: 0.6em 1em; border-radius: 4px; }
nav a { margin-right: 1em; }
)GP";

struct PageFigure {
  Figure fig;
  bool drawn = false;
};

std::string build_page(const Results& r, const std::vector<PageFigure>& figures, const ReportResult& result,
                       const ReportOptions& o, const fs::path& final_dir, int bar_bits,
                       const std::vector<int>& worst_lowest) {
  const json empty = json::object();
  const json& m = r.manifest ? *r.manifest : empty;
  const json& s = r.summary ? *r.summary : empty;
  auto get = [](const json& j, const char* k) -> std::string { return j.contains(k) ? json_text(j[k]) : ""; };
  // The folder as named ("qsweep report ." or "run/" name the folder itself).
  fs::path named = fs::absolute(final_dir).lexically_normal();
  if (named.filename().empty()) named = named.parent_path();
  const std::string name = s.contains("experiment") ? get(s, "experiment") : named.parent_path().filename().string();
  const std::string run_id = named.filename().string();
  std::string h;
  h += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n";
  h += "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n";
  h += fmt::format("<title>qsweep {} {}</title>\n<style>{}</style>\n</head>\n<body>\n", html_escape(name),
                   html_escape(run_id), kCss);
  h += fmt::format("<h1>{}</h1>\n<p class=\"sub\">qsweep results <code>{}</code>", html_escape(name),
                   html_escape(run_id));
  if (m.contains("git_commit")) h += fmt::format(" &middot; commit <code>{}</code>", html_escape(get(m, "git_commit")));
  if (m.contains("finished_utc")) h += fmt::format(" &middot; finished {}", html_escape(get(m, "finished_utc")));
  h += "</p>\n";

  h += "<nav><a href=\"#accuracy\">accuracy</a><a href=\"#figures\">figures</a><a href=\"#tables\">tables</a>"
       "<a href=\"#manifest\">manifest</a><a href=\"#rerun\">re-run</a></nav>\n";

  // Accuracy and worst layers.
  h += "<h2 id=\"accuracy\">Float32 accuracy and the worst layers</h2>\n";
  h += fmt::format("<p class=\"big\">float32 top-1: <b>{}</b> on {} images",
                   std::isfinite(r.float_top1) ? fmt::format("{:.2f}%", r.float_top1) : "?", r.images);
  if (r.summary && r.summary->contains("float_top5") && (*r.summary)["float_top5"].is_number()) {
    h += fmt::format(" (top-5 {:.2f}%)", (*r.summary)["float_top5"].get<double>());
  }
  if (field(field(m, "model"), "path").is_string()) {
    h += fmt::format(" &middot; model <code>{}</code>",
                     html_escape(fs::path(get(field(m, "model"), "path")).filename().string()));
  }
  if (!r.cells.empty()) {
    h += fmt::format(" &middot; {} layers &times; {} weight bit-widths", r.layers.size(), r.bits.size());
  } else if (s.contains("kind")) {
    h += fmt::format(" &middot; kind {}", html_escape(get(s, "kind")));
  }
  if (s.contains("act_bits")) h += fmt::format(", activations at {} bits", html_escape(get(s, "act_bits")));
  if (s.contains("scheme"))
    h += fmt::format(", {} {}", html_escape(get(s, "scheme")), html_escape(get(s, "granularity")));
  h += "</p>\n";
  // The worst layers at each bit-width, lowest first, numbers as layerwise.csv has them.
  const size_t nworst = worst_lowest.size();
  if (!r.cells.empty() && nworst > 0) {
    const bool has_ci = r.grid.has("ci_low") && r.grid.has("ci_high");
    const bool has_top5 = r.grid.has("top5_degradation");
    h += "<table><thead><tr><th>weight bits</th><th>rank</th><th>#</th><th>layer</th><th>degradation (points)</th>";
    h += has_ci ? "<th>interval</th>" : "";
    h += has_top5 ? "<th>top-5 degradation (points)</th>" : "";
    h += "<th>noise</th><th>SQNR (dB)</th></tr></thead><tbody>\n";
    for (int b : r.bits) {
      const auto order = r.worst_at(b);
      const size_t n = std::min(order.size(), nworst);
      for (size_t i = 0; i < n; ++i) {
        const Cell* c = r.cell(order[i], b);
        const LayerInfo* L = r.layer(order[i]);
        h += "<tr>";
        if (i == 0) h += fmt::format("<td class=\"n\" rowspan=\"{}\"><b>{}</b></td>", n, b);
        h += fmt::format("<td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td>", i + 1, order[i],
                         html_escape(L ? L->name : ""));
        h += fmt::format("<td class=\"n\" style=\"background:{}{}\">{}</td>",
                         degradation_rgb(c->degradation, o.saturate),
                         c->degradation >= kWhiteTextFrom * o.saturate ? ";color:#fff" : "",
                         html_escape(r.grid.at(c->row, "degradation")));
        if (has_ci) {
          h += fmt::format("<td class=\"n\">[{}, {}]</td>", html_escape(r.grid.at(c->row, "ci_low")),
                           html_escape(r.grid.at(c->row, "ci_high")));
        }
        if (has_top5) h += fmt::format("<td class=\"n\">{}</td>", html_escape(r.grid.at(c->row, "top5_degradation")));
        h += fmt::format("<td class=\"n\">{}</td><td class=\"n\">{}</td></tr>\n",
                         html_escape(r.grid.at(c->row, "noise")), html_escape(r.grid.at(c->row, "sqnr_db")));
      }
    }
    h += "</tbody></table>\n";
  }

  // Figures.
  h += "<h2 id=\"figures\">Figures</h2>\n";
  if (result.gnuplot_missing || !o.plots) {
    h += fmt::format(
        "<p class=\"note\">The figures were not drawn ({}). Their data and gnuplot scripts are in "
        "<code>figures/</code>; draw them with <code>qsweep report {}</code> once gnuplot is "
        "installed (Debian: <code>apt-get install gnuplot-nox</code>).</p>\n",
        result.gnuplot_missing ? "gnuplot was not found" : "output.plots is false",
        html_escape(shell_quote(final_dir.string())));
  }
  for (const auto& pf : figures) {
    const Figure& f = pf.fig;
    h += fmt::format("<figure id=\"{}\">\n<h3>{}</h3>\n", f.stem, html_escape(f.title));
    if (pf.drawn) {
      h += fmt::format("<a href=\"figures/{0}.svg\"><img src=\"figures/{0}.png\" alt=\"{1}\"></a>\n", f.stem,
                       html_escape(f.title));
    }
    h += fmt::format("<figcaption>{}</figcaption>\n<div class=\"files\">", html_escape(f.caption));
    if (pf.drawn) {
      h += fmt::format("<a href=\"figures/{0}.png\">PNG</a> &middot; <a href=\"figures/{0}.svg\">SVG</a> &middot; ",
                       f.stem);
    }
    h += fmt::format(
        "data <a href=\"figures/{0}.dat\">{0}.dat</a> &middot; script <a href=\"figures/{0}.gp\">{0}.gp</a>"
        "</div>\n",
        f.stem);
    // Table 1 beside its chart.
    if (f.stem == "comparison" && r.comparison) {
      h += "<p class=\"files\">from <a href=\"comparison.csv\">comparison.csv</a></p>\n" +
           csv_table(*r.comparison, "comparison-table");
    }
    h += "</figure>\n";
  }

  // Tables.
  h += "<h2 id=\"tables\">Tables</h2>\n";
  if (!r.cells.empty()) {
    h += fmt::format(
        "<h3>Top-1 degradation (points), one layer quantized</h3>\n<p class=\"files\">from "
        "<a href=\"layerwise.csv\">layerwise.csv</a>; colours as in the heatmap (saturated at {:g})</p>\n",
        o.saturate);
    h += grid_table(r, false, o.saturate);
    h += "<h3>Output noise E&#8214;y &minus; &ycirc;&#8214;&sup2;, one layer quantized</h3>\n";
    h += grid_table(r, true, o.saturate);
  }
  if (r.comparison) h += "<h3>Comparison</h3>\n<p>With its chart: <a href=\"#comparison\">Comparison</a>.</p>\n";
  if (r.additivity) {
    h += "<h3>Additivity</h3>\n<p class=\"files\">from <a href=\"additivity.csv\">additivity.csv</a>";
    if (s.contains("additivity")) {
      for (const char* k : {"degradation", "noise"}) {
        const json& a = field(field(s, "additivity"), k);
        if (a.is_object()) {
          h += fmt::format("; {}: r = {}, slope = {}", k, html_escape(json_text(field(a, "pearson_r"))),
                           html_escape(json_text(field(a, "slope"))));
        }
      }
    }
    h += "</p>\n" + csv_table(*r.additivity, "additivity-table");
  }
  if (r.layer_stats) {
    h += "<h3>Layer statistics</h3>\n<p class=\"files\">from <a href=\"layers.csv\">layers.csv</a></p>\n";
    h += csv_table(*r.layer_stats, "layers-table");
  }
  if (s.contains("layers") && s["layers"].is_array()) {
    h += "<h3>Layers</h3>\n<div class=\"scroll\"><table><thead><tr><th>#</th><th>name</th><th>op</th>"
         "<th>activation</th><th>weight shape</th></tr></thead><tbody>\n";
    for (const auto& L : s["layers"]) {
      h += fmt::format("<tr><td class=\"n\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                       html_escape(get(L, "index")), html_escape(get(L, "name")), html_escape(get(L, "op_type")),
                       html_escape(get(L, "activation")),
                       html_escape(L.contains("weight_shape") ? L["weight_shape"].dump() : ""));
    }
    h += "</tbody></table></div>\n";
  }

  // Manifest.
  h += "<h2 id=\"manifest\">Manifest</h2>\n";
  if (r.manifest) {
    std::vector<std::pair<std::string, std::string>> rows;
    flatten(m, "", rows);
    h += "<p class=\"files\">from <a href=\"manifest.json\">manifest.json</a>; the configuration as run: "
         "<a href=\"config.toml\">config.toml</a>";
    if (r.summary) h += "; everything else: <a href=\"summary.json\">summary.json</a>";
    h += "</p>\n<table class=\"kv\"><tbody>\n";
    for (const auto& [k, v] : rows) {
      h += fmt::format("<tr><td>{}</td><td><code>{}</code></td></tr>\n", html_escape(k), html_escape(v));
    }
    h += "</tbody></table>\n";
  } else {
    h += "<p>This folder has no manifest.json.</p>\n";
  }

  // Re-run.
  h += "<h2 id=\"rerun\">Re-run</h2>\n";
  if (m.contains("command_line")) {
    h += fmt::format(
        "<p>The command that produced this folder (run in the same working directory):</p>\n"
        "<pre>{}</pre>\n",
        html_escape(get(m, "command_line")));
  }
  const std::string folder = shell_quote(final_dir.string());
  h += fmt::format(
      "<p>The same experiment from the configuration saved here (every default filled in; "
      "<code>--fresh</code> computes it again instead of finding this finished run):</p>\n"
      "<pre>qsweep run {}/config.toml --fresh</pre>\n"
      "<p>Redraw the figures and this page from the files in this folder alone (after editing "
      "<code>output.saturate</code> or <code>output.bar_bits</code> in config.toml, or with "
      "<code>--saturate</code> / <code>--bar-bits</code>):</p>\n<pre>qsweep report {}</pre>\n"
      "<p>Restyle one figure: edit <code>figures/&lt;name&gt;.gp</code> and run "
      "<code>gnuplot &lt;name&gt;.gp</code> inside <code>figures/</code>.</p>\n",
      html_escape(folder), html_escape(folder));
  if (bar_bits > 0) h += fmt::format("<p class=\"files\">Per-layer bars drawn at {} bits.</p>\n", bar_bits);
  h += "</body>\n</html>\n";
  return h;
}

}  // namespace

std::string shell_quote(const std::string& s) {
  if (!s.empty() && s.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./=:,+@%") ==
                        std::string::npos) {
    return s;
  }
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

std::string html_escape(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

ReportOptions report_options_for(const fs::path& dir) {
  ReportOptions o;
  const fs::path cfg = dir / "config.toml";
  std::error_code ec;
  if (!fs::is_regular_file(cfg, ec)) return o;
  try {
    const toml::table t = toml::parse_file(cfg.string());
    if (auto v = t.at_path("output.plots").value<bool>()) o.plots = *v;
    if (auto v = t.at_path("output.saturate").value<double>()) o.saturate = *v;
    if (auto v = t.at_path("output.bar_bits").value<int64_t>()) o.bar_bits = static_cast<int>(*v);
    if (auto v = t.at_path("output.worst").value<int64_t>()) o.worst = static_cast<int>(*v);
  } catch (const toml::parse_error& e) {
    user_error("{}:{}:{}: not valid TOML: {}", cfg.string(), e.source().begin.line, e.source().begin.column,
               e.description());
  }
  return o;
}

// Temp files a process killed outright (SIGKILL) left in `folder`: `.gnuplot-<pid>.err` and
// `.<name>.tmp<pid>` (write_file_atomic) of a process that no longer runs here, untouched for
// 10 minutes. Those of a live process are its own; the age spares those of a process on
// another host (a shared file system) or in another PID namespace, whose writes take seconds.
static void remove_dead_temp_files(const fs::path& folder) {
  std::error_code ec;
  const auto old = fs::file_time_type::clock::now() - std::chrono::minutes(10);
  for (const auto& e : fs::directory_iterator(folder, ec)) {
    const std::string name = e.path().filename().string();
    if (name.empty() || name[0] != '.') continue;
    std::string pid;
    if (name.rfind(".gnuplot-", 0) == 0 && name.size() > 13 && name.substr(name.size() - 4) == ".err") {
      pid = name.substr(9, name.size() - 13);
    } else if (const size_t at = name.rfind(".tmp"); at != std::string::npos && at > 0) {
      pid = name.substr(at + 4);
    }
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos || pid.size() > 9) continue;
    const pid_t p = static_cast<pid_t>(std::stol(pid));
    const auto written = fs::last_write_time(e.path(), ec);
    if (!ec && written < old && p > 0 && kill(p, 0) != 0 && errno == ESRCH) fs::remove(e.path(), ec);
  }
}

ReportResult write_report(const fs::path& dir, const ReportOptions& o, const Graph* graph) {
  ReportResult result;
  const fs::path final_dir = o.final_dir.empty() ? dir : o.final_dir;
  const Results r = load_results(dir);
  remove_dead_temp_files(dir);
  remove_dead_temp_files(dir / "figures");
  const bool grid = !r.cells.empty();
  const double saturate = o.saturate > 0 ? o.saturate : 5.0;
  const int lowest = grid ? r.bits.front() : 0;
  int bar_bits = o.bar_bits > 0 ? o.bar_bits : lowest;
  if (grid && std::find(r.bits.begin(), r.bits.end(), bar_bits) == r.bits.end()) {
    result.warnings.push_back(
        fmt::format("{} {} is not a bit-width of this run; the per-layer bars use {} bits",
                    o.bar_bits_from == "output.bar_bits" ? "output.bar_bits =" : o.bar_bits_from, bar_bits, lowest));
    bar_bits = lowest;
  }
  // How many worst layers: as asked, else as many as summary.json lists.
  int nworst = o.worst;
  if (nworst <= 0 && r.summary) {
    const json& w = field(field(*r.summary, "worst_layers"), std::to_string(lowest));
    if (w.is_array()) nworst = static_cast<int>(w.size());
  }
  if (nworst <= 0) nworst = 3;
  std::vector<int> worst = grid ? r.worst_at(lowest) : std::vector<int>{};
  if (worst.size() > static_cast<size_t>(nworst)) worst.resize(nworst);

  std::vector<PageFigure> figures;
  auto add = [&](Figure f) { figures.push_back(PageFigure{std::move(f), false}); };
  if (grid) {
    add(heatmap(r, false, saturate));
    if (std::any_of(r.cells.begin(), r.cells.end(), [](const auto& c) { return c.second.noise > 0; })) {
      add(heatmap(r, true, saturate));
    }
    add(layer_bars(r, bar_bits, nworst));
    add(noise_vs_degradation(r));
  }
  if (r.additivity && !r.additivity->rows.empty()) {
    add(additivity(r, false));
    add(additivity(r, true));
  }
  if (r.comparison && !r.comparison->rows.empty()) add(comparison(r));
  try {
    const auto weights = worst_layer_weights(r, worst, lowest, graph, result.warnings);
    if (!weights.empty()) add(weight_histogram(r, weights, lowest));
  } catch (const std::exception& e) {
    result.warnings.push_back(fmt::format("weight histogram skipped: {}", e.what()));
  }

  const fs::path fig_dir = dir / "figures";
  for (const auto& pf : figures) {
    write_into(fig_dir / (pf.fig.stem + ".dat"), pf.fig.dat);
    write_into(fig_dir / (pf.fig.stem + ".gp"), pf.fig.gp);
    result.figures.push_back(pf.fig.stem);
  }

  if (o.plots) {
    std::vector<std::string> failed;
    std::string first_error;
    bool hung = false;
    for (auto& pf : figures) {
      if (o.stop != nullptr && o.stop->load()) break;  // the caller discards the folder
      const std::string& stem = pf.fig.stem;
      const GnuplotRun run = run_gnuplot(o.gnuplot, fig_dir, stem + ".gp", o.gnuplot_timeout_s);
      if (run.status == GnuplotRun::Status::kNotFound) {
        result.gnuplot_missing = true;
        break;
      }
      if (run.status == GnuplotRun::Status::kOk && images_ok(fig_dir, stem)) {
        pf.drawn = true;
        result.drawn.push_back(stem);
        continue;
      }
      // Leave no half-written image that the page could show.
      std::error_code ec;
      fs::remove(fig_dir / (stem + ".png"), ec);
      fs::remove(fig_dir / (stem + ".svg"), ec);
      failed.push_back(stem);
      if (first_error.empty()) {
        first_error = fmt::format("{}: {}", stem,
                                  run.status == GnuplotRun::Status::kOk ? "no valid PNG/SVG written" : run.message);
      }
      // A gnuplot that hangs once would hang again: the run's time stays bounded by one limit.
      if (run.status == GnuplotRun::Status::kTimedOut) {
        hung = true;
        break;
      }
    }
    if (result.gnuplot_missing) {
      result.warnings.push_back(fmt::format(
          "figures skipped: '{}' was not found; install gnuplot (Debian: apt-get install gnuplot-nox) and draw them "
          "with: qsweep report {}",
          o.gnuplot, shell_quote(final_dir.string())));
    } else if (hung) {
      result.warnings.push_back(fmt::format(
          "gnuplot did not finish {}, so {} of {} figures were not drawn; their "
          "scripts are in {}",
          first_error, figures.size() - result.drawn.size(), figures.size(), (final_dir / "figures").string()));
    } else if (!failed.empty()) {
      result.warnings.push_back(fmt::format("gnuplot could not draw {} of {} figures ({}); their scripts are in {}",
                                            failed.size(), figures.size(), first_error,
                                            (final_dir / "figures").string()));
    }
  }

  // Stopped: the page of a complete earlier drawing is kept (the run that stops discards its
  // staging folder anyway).
  if (o.stop != nullptr && o.stop->load()) return result;
  write_into(dir / "report.html", build_page(r, figures, result, o, final_dir, bar_bits, worst));
  return result;
}

void check_results_tables(const fs::path& dir) { (void)load_results(dir); }

}  // namespace qsweep
