#include "experiments/check.h"

#include <fmt/format.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <sstream>

#include "experiments/csv.h"
#include "experiments/report.h"
#include "runtime/error.h"

namespace qsweep {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// The files of one results folder that check reads.
struct Folder {
  fs::path dir;
  std::optional<Csv> layerwise, additivity, comparison;
  std::optional<json> summary, manifest;
  std::optional<toml::table> config;
};

std::optional<json> read_json_file(const fs::path& p) {
  const auto text = read_text(p);
  if (!text) return std::nullopt;
  try {
    return json::parse(*text);
  } catch (const json::exception& e) {
    user_error("{}: not valid JSON ({})", p.string(), e.what());
  }
}

Folder load(const fs::path& dir, const char* role) {
  std::error_code ec;
  if (fs::exists(dir, ec) && !fs::is_directory(dir, ec)) {
    user_error("{} folder '{}' is a file; give a results folder", role, dir.string());
  }
  if (!fs::is_directory(dir, ec)) user_error("{} folder '{}' does not exist", role, dir.string());
  Folder f;
  f.dir = dir;
  f.layerwise = read_csv(dir / "layerwise.csv");
  f.additivity = read_csv(dir / "additivity.csv");
  f.comparison = read_csv(dir / "comparison.csv");
  if (!f.layerwise && !f.additivity && !f.comparison) {
    user_error("{} folder '{}' has no layerwise.csv, additivity.csv or comparison.csv: not a qsweep results folder",
               role, dir.string());
  }
  f.summary = read_json_file(dir / "summary.json");
  f.manifest = read_json_file(dir / "manifest.json");
  for (const auto& [name, j] : {std::pair{"summary.json", &f.summary}, std::pair{"manifest.json", &f.manifest}}) {
    if (*j && !(*j)->is_object()) user_error("{}: not a qsweep {} (a JSON object)", (dir / name).string(), name);
  }
  // The float32 network's numbers check compares: counts of images (top-5's only in folders
  // written since qsweep reported it), and the rounded points, which must agree with them.
  if (f.summary) {
    const json& s = *f.summary;
    const fs::path file = dir / "summary.json";
    auto count = [&](const char* key, bool required) {
      if (!s.contains(key)) {
        if (required) user_error("{}: no field '{}'; not a qsweep summary.json", file.string(), key);
        return;
      }
      if (!s[key].is_number_unsigned()) {
        user_error("{}: field '{}' holds {}, not a count of images (a whole number of 0 or more)", file.string(), key,
                   s[key].dump());
      }
    };
    count("images", true);
    count("float_correct", true);
    count("float_correct5", false);
    for (const char* key : {"float_top1", "float_top5"}) {
      if (s.contains(key) && !s[key].is_number()) {
        user_error("{}: field '{}' holds {}, not a number", file.string(), key, s[key].dump());
      }
    }
    if (s["images"].get<uint64_t>() == 0) user_error("{}: field 'images' is 0; not a finished run", file.string());
    for (const char* key : {"float_correct", "float_correct5"}) {
      if (s.contains(key) && s[key].get<uint64_t>() > s["images"].get<uint64_t>()) {
        user_error("{}: field '{}' holds {}, more than its {} images", file.string(), key, s[key].get<uint64_t>(),
                   s["images"].get<uint64_t>());
      }
    }
  }
  // Context only: an unreadable config.toml leaves its keys out of the comparison's context.
  if (const auto text = read_text_if_readable(dir / "config.toml")) {
    try {
      f.config = toml::parse(*text, (dir / "config.toml").string());
    } catch (const toml::parse_error& e) {
      // Context only, but a damaged folder all the same (report refuses it too).
      user_error("{}:{}:{}: not valid TOML: {}", (dir / "config.toml").string(), e.source().begin.line,
                 e.source().begin.column, e.description());
    }
  }
  return f;
}

// Top-1 of a row in points: from the counts when the table has them (exact), else the column.
double top1_of(const Csv& csv, size_t i, const char* top1_col, const char* correct_col = "correct") {
  if (csv.has(correct_col) && csv.has("images")) {
    const double correct = csv_number(csv.at(i, correct_col)), images = csv_number(csv.at(i, "images"));
    if (std::isfinite(correct) && std::isfinite(images) && images > 0) return 100.0 * correct / images;
  }
  return csv_number(csv.at(i, top1_col));
}

// Top-5 of a row in points (layerwise.csv: from `correct5`), or NaN where the table has no
// top-5 column (written before qsweep reported top-5).
double top5_of(const Csv& csv, size_t i, const char* top5_col) {
  return csv.has(top5_col) ? top1_of(csv, i, top5_col, "correct5") : kNaN;
}

struct Row {
  double top1 = kNaN, noise = kNaN, images = kNaN;
  std::string identity;  // what must be equal for the row to be the same row (additivity: its layers)
  double top5 = kNaN;
};

// The top-5 column of each table.
const char* top5_column(const std::string& table) {
  return table == "additivity.csv" ? "measured_top5" : "top5";
}

using Table = std::vector<std::pair<std::string, Row>>;  // in file order

std::string bits_key(const Csv& csv, size_t i) {
  return fmt::format("{}, {}-bit weights, {}-bit activations", csv.at(i, "layer_name"), csv.at(i, "weight_bits"),
                     csv.at(i, "act_bits"));
}

// Rows of a table keyed by name; a repeated key is an error (the row would be ambiguous).
Table rows_of(const Folder& f, const std::string& table) {
  Table out;
  std::map<std::string, size_t> seen;
  const fs::path file = f.dir / table;
  // additivity.csv and comparison.csv have no images column: their rows were evaluated on
  // summary.json's images (checked to be a count when the folder was loaded).
  const double summary_images =
      f.summary && f.summary->contains("images") ? (*f.summary)["images"].get<double>() : kNaN;
  // Accuracies of rows without counts (written with 4 decimals) must be a whole number of the
  // images out of summary.json's: another value is an edited or damaged table, not a move.
  auto require_whole = [&](const Csv& c, size_t i, const char* col) {
    if (!c.has(col) || !(summary_images > 0) || summary_images * 5e-7 >= 0.25) return;
    const double pts = csv_number(c.at(i, col)), count = pts * summary_images / 100.0;
    if (std::abs(count - std::round(count)) > summary_images * 5e-7 + 1e-6) {
      user_error("{}, line {}: column '{}' holds {}, which is no whole number of the {} images summary.json gives; the "
                 "table was edited or damaged",
                 file.string(), c.line[i], col, c.at(i, col), summary_images);
    }
  };
  auto add = [&](std::string key, Row row) {
    if (!seen.emplace(key, out.size()).second) user_error("{}: the row '{}' appears twice", file.string(), key);
    out.emplace_back(std::move(key), std::move(row));
  };
  if (table == "layerwise.csv") {
    const Csv& c = *f.layerwise;
    require_columns(c, file, {"layer_name", "weight_bits", "act_bits", "noise", "top1"});
    require_numbers(c, file, {"noise"});
    require_finite(c, file, {"top1", "float_top1", "top5"});
    require_counts(c, file, {"correct", "images", "correct5"});
    for (size_t i = 0; i < c.rows.size(); ++i) {
      add(bits_key(c, i), Row{top1_of(c, i, "top1"), csv_number(c.at(i, "noise")), csv_number(c.at(i, "images")), "",
                              top5_of(c, i, "top5")});
    }
  } else if (table == "additivity.csv") {
    const Csv& c = *f.additivity;
    require_columns(c, file, {"config_index", "low_layers", "measured_top1", "measured_noise"});
    require_numbers(c, file, {"measured_noise"});
    require_finite(c, file, {"measured_top1", "measured_top5"});
    for (size_t i = 0; i < c.rows.size(); ++i) {
      require_whole(c, i, "measured_top1");
      require_whole(c, i, "measured_top5");
      add("configuration " + c.at(i, "config_index"),
          Row{csv_number(c.at(i, "measured_top1")), csv_number(c.at(i, "measured_noise")), summary_images,
              fmt::format("layers {} at {} bits, the rest at {}", c.at(i, "low_layers"), c.at(i, "low_bits"),
                          c.at(i, "high_bits")),
              top5_of(c, i, "measured_top5")});
    }
  } else {
    const Csv& c = *f.comparison;
    require_columns(c, file, {"variant", "top1", "noise"});
    require_numbers(c, file, {"noise"});
    require_finite(c, file, {"top1", "top5"});
    for (size_t i = 0; i < c.rows.size(); ++i) {
      require_whole(c, i, "top1");
      require_whole(c, i, "top5");
      add("variant " + c.at(i, "variant"),
          Row{csv_number(c.at(i, "top1")), csv_number(c.at(i, "noise")), summary_images, "", top5_of(c, i, "top5")});
    }
  }
  return out;
}

// The float32 network's top-1 in points: summary.json's counts, else layerwise.csv's column.
double float_top1(const Folder& f) {
  if (f.summary && f.summary->contains("float_correct") && f.summary->contains("images")) {
    const auto& s = *f.summary;
    if (s["float_correct"].is_number() && s["images"].is_number() && s["images"].get<double>() > 0) {
      return 100.0 * s["float_correct"].get<double>() / s["images"].get<double>();
    }
  }
  if (f.summary && f.summary->contains("float_top1") && (*f.summary)["float_top1"].is_number()) {
    return (*f.summary)["float_top1"].get<double>();
  }
  if (f.layerwise && f.layerwise->has("float_top1") && !f.layerwise->rows.empty()) {
    return csv_number(f.layerwise->at(0, "float_top1"));
  }
  return kNaN;
}

// The float32 network's top-5 in points (summary.json), NaN where it has none.
double float_top5(const Folder& f) {
  if (!f.summary) return kNaN;
  const auto& s = *f.summary;
  if (s.contains("float_correct5") && s.contains("images") && s["float_correct5"].is_number() &&
      s["images"].is_number() && s["images"].get<double>() > 0) {
    return 100.0 * s["float_correct5"].get<double>() / s["images"].get<double>();
  }
  return kNaN;
}

// Whether a folder's table has a top-5 column.
bool has_top5(const Folder& f, const std::string& table) {
  const std::optional<Csv>& c = table == "layerwise.csv"    ? f.layerwise
                                : table == "additivity.csv" ? f.additivity
                                                            : f.comparison;
  return c && c->has(top5_column(table));
}

bool same_value(double a, double b) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  return a == b;
}

// Relative change of noise: 0 for equal values (also two infinities of one sign or two NaNs),
// infinity when one side is NaN or infinite and the other not.
double relative_move(double a, double b) {
  if (same_value(a, b)) return 0.0;
  if (!std::isfinite(a) || !std::isfinite(b)) return std::numeric_limits<double>::infinity();
  return std::abs(a - b) / std::max(std::abs(a), std::abs(b));
}

double points_move(double a, double b) {
  if (same_value(a, b)) return 0.0;
  if (!std::isfinite(a) || !std::isfinite(b)) return std::numeric_limits<double>::infinity();
  return std::abs(a - b);
}

class Checker {
 public:
  Checker(CheckResult& r, const CheckOptions& o) : r_(r), o_(o) {}

  void top1(const std::string& table, const std::string& row, double base, double cur) {
    points(table, row, "top-1", base, cur, o_.top1_tol, r_.max_top1_move);
  }
  void top5(const std::string& table, const std::string& row, double base, double cur) {
    points(table, row, "top-5", base, cur, o_.top5_tol, r_.max_top5_move);
  }
  void noise(const std::string& table, const std::string& row, double base, double cur) {
    ++r_.compared;
    seen(table, row);
    const double move = relative_move(base, cur);
    if (std::isfinite(move)) r_.max_noise_move = std::max(r_.max_noise_move, move);
    if (!(move <= o_.noise_rtol)) r_.moved.push_back(CheckRow{table, row, "noise", base, cur, ""});
  }
  void row(const std::string& table, const std::string& row, const std::string& detail) {
    seen(table, row);
    r_.moved.push_back(CheckRow{table, row, "row", kNaN, kNaN, detail});
  }

  void tables(const Folder& base, const Folder& cur, const std::string& table) {
    const Table b = rows_of(base, table), c = rows_of(cur, table);
    // Top-5 where both tables have it; one line of context where only one does.
    const bool top5_base = has_top5(base, table), top5_cur = has_top5(cur, table);
    if (top5_base != top5_cur) {
      r_.context.push_back(fmt::format("top-5 is not compared in {}: only the {} has it (earlier qsweep versions did "
                                       "not write it)",
                                       table, top5_base ? "baseline" : "results"));
    }
    std::map<std::string, const Row*> in_base;
    for (const auto& [k, v] : b) in_base.emplace(k, &v);
    std::map<std::string, const Row*> in_cur;
    for (const auto& [k, v] : c) in_cur.emplace(k, &v);
    // Rows evaluated on other image counts are not compared; when every matched row is (another
    // data.eval.count), one line says so instead of each row.
    size_t matched = 0;
    std::set<std::string> other_images;
    double base_images = kNaN, cur_images = kNaN;
    for (const auto& [k, v] : c) {
      const auto it = in_base.find(k);
      if (it == in_base.end()) continue;
      ++matched;
      if (!same_value(it->second->images, v.images)) {
        other_images.insert(k);
        base_images = it->second->images;
        cur_images = v.images;
      }
    }
    const bool all_images_differ = !other_images.empty() && other_images.size() == matched;
    if (all_images_differ) {
      row(table, "every row", fmt::format("evaluated on {} images, the baseline on {}", cur_images, base_images));
    }
    for (const auto& [k, v] : b) {
      if (!in_cur.count(k)) row(table, k, "in the baseline only");
    }
    for (const auto& [k, v] : c) {
      const auto it = in_base.find(k);
      if (it == in_base.end()) {
        row(table, k, "in the results only");
        continue;
      }
      const Row& was = *it->second;
      if (was.identity != v.identity) {
        row(table, k, fmt::format("{} (baseline: {})", v.identity, was.identity));
        continue;
      }
      if (all_images_differ) continue;
      if (other_images.count(k)) {
        row(table, k, fmt::format("evaluated on {} images, the baseline on {}", v.images, was.images));
        continue;
      }
      top1(table, k, was.top1, v.top1);
      noise(table, k, was.noise, v.noise);
      if (top5_base && top5_cur) top5(table, k, was.top5, v.top5);
    }
  }

 private:
  // An accuracy in points (top-1, top-5) against its tolerance.
  void points(const std::string& table, const std::string& row, const char* quantity, double base, double cur,
              double tol, double& max_move) {
    ++r_.compared;
    seen(table, row);
    const double move = points_move(base, cur);
    if (std::isfinite(move)) max_move = std::max(max_move, move);
    // 1e-9 points: the counts' quotient, not the tolerance, decides at the boundary.
    if (!(move <= tol + 1e-9)) r_.moved.push_back(CheckRow{table, row, quantity, base, cur, ""});
  }
  void seen(const std::string& table, const std::string& row) {
    if (r_.rows.empty() || r_.rows.back() != std::make_pair(table, row)) r_.rows.emplace_back(table, row);
  }
  CheckResult& r_;
  const CheckOptions& o_;
};

// ---------------------------------------------------------------- context

std::string json_text(const json& j) { return j.is_string() ? j.get<std::string>() : j.dump(); }

const json* json_at(const std::optional<json>& j, const char* path) {
  if (!j) return nullptr;
  const json* cur = &*j;
  std::string p = path;
  size_t start = 0;
  while (start <= p.size()) {
    const size_t dot = p.find('.', start);
    const std::string part = p.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    if (!cur->is_object() || !cur->contains(part)) return nullptr;
    cur = &(*cur)[part];
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return cur;
}

std::string about(const Folder& f) {
  auto field = [&](const char* path) {
    const json* j = json_at(f.manifest, path);
    return j ? json_text(*j) : std::string("?");
  };
  if (!f.manifest) return "no manifest.json";
  std::string commit = field("git_commit");
  if (commit.size() > 12) commit.resize(12);
  return fmt::format("git {}, backend {} ({}), finished {}", commit, field("backend.name"), field("backend.device"),
                     field("finished_utc"));
}

// Every leaf of a TOML table as "dotted.key" -> its TOML text (arrays of tables as one value).
void flatten(const toml::table& t, const std::string& prefix, std::map<std::string, std::string>& out) {
  for (const auto& [k, v] : t) {
    const std::string key = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
    if (const toml::table* sub = v.as_table()) {
      flatten(*sub, key, out);
    } else {
      std::ostringstream ss;
      ss << toml::toml_formatter{v, toml::format_flags::none};
      std::string text = ss.str();
      std::replace(text.begin(), text.end(), '\n', ' ');
      out[key] = text;
    }
  }
}

void context(const Folder& base, const Folder& cur, std::vector<std::string>& out) {
  static constexpr std::pair<const char*, const char*> kManifest[] = {
      {"model.sha256", "model sha256"},
      {"dataset.eval.images_sha256", "evaluation images sha256"},
      {"dataset.eval.labels_sha256", "evaluation labels sha256"},
      {"dataset.calibration.images_sha256", "calibration images sha256"},
      {"backend.name", "backend"},
      {"backend.device", "device"},
      {"backend.fused_conv_variant", "fused conv variant"},
      {"backend.threads", "threads"},
      {"libraries.backend", "backend libraries"},
      {"git_commit", "git commit"},
  };
  if (base.manifest && cur.manifest) {
    for (const auto& [path, label] : kManifest) {
      const json* b = json_at(base.manifest, path);
      const json* c = json_at(cur.manifest, path);
      if (!b && !c) continue;
      const std::string bt = b ? json_text(*b) : "(absent)", ct = c ? json_text(*c) : "(absent)";
      if (bt != ct) out.push_back(fmt::format("{}: {} (baseline: {})", label, ct, bt));
    }
  }
  if (base.config && cur.config) {
    std::map<std::string, std::string> b, c;
    flatten(*base.config, "", b);
    flatten(*cur.config, "", c);
    std::map<std::string, std::pair<std::string, std::string>> diff;
    for (const auto& [k, v] : b) {
      const auto it = c.find(k);
      if (it == c.end() || it->second != v) diff[k] = {v, it == c.end() ? "(absent)" : it->second};
    }
    for (const auto& [k, v] : c) {
      if (!b.count(k)) diff[k] = {"(absent)", v};
    }
    // Where the model and data were read from matters only through what was read: with both
    // manifests at hand their sha256 lines above say that.
    const bool hashes = base.manifest && cur.manifest;
    for (const auto& [k, bc] : diff) {
      if (k.rfind("output.", 0) == 0) continue;  // where and how results are written, not what they are
      if (hashes && (k == "model.path" || k == "data.path")) continue;
      out.push_back(fmt::format("config {} = {} (baseline: {})", k, bc.second, bc.first));
    }
  }
}

std::string number_text(const CheckRow& m, double v) {
  if (std::isnan(v)) return "-";
  if (m.quantity == "top-1" || m.quantity == "top-5") return fmt::format("{:.2f}%", v);
  return fmt::format("{:.6g}", v);
}

std::string change_text(const CheckRow& m) {
  if (m.quantity == "row") return m.detail;
  if (m.quantity == "top-1" || m.quantity == "top-5") {
    if (!std::isfinite(m.current - m.baseline)) return "not comparable";
    return fmt::format("{:+.2f} pts", m.current - m.baseline);
  }
  const double rel = relative_move(m.baseline, m.current);
  if (!std::isfinite(rel)) return "not comparable";
  return fmt::format("{:+.3g}%",
                     100.0 * (m.current - m.baseline) / std::max(std::abs(m.baseline), std::abs(m.current)));
}

std::string tolerance_text(const CheckOptions& o) {
  return fmt::format("top-1 {} points, top-5 {} points, noise {} relative", o.top1_tol, o.top5_tol, o.noise_rtol);
}

}  // namespace

CheckResult check_results(const fs::path& current, const fs::path& baseline, const CheckOptions& options) {
  if (!(options.top1_tol >= 0.0) || !(options.top5_tol >= 0.0) || !(options.noise_rtol >= 0.0)) {
    user_error("check tolerances must be 0 or more (top-1 {}, top-5 {}, noise {})", options.top1_tol,
               options.top5_tol, options.noise_rtol);
  }
  const Folder base = load(baseline, "baseline"), cur = load(current, "results");
  CheckResult r;
  r.current = current;
  r.baseline = baseline;
  r.current_about = about(cur);
  r.baseline_about = about(base);
  context(base, cur, r.context);

  Checker check(r, options);
  // summary.json holds the float32 network's numbers: on one side only, it counts as moved, like
  // a table (a baseline without it would leave the float32 top-5 unchecked).
  if (base.summary.has_value() != cur.summary.has_value()) {
    check.row("summary.json", "the whole file", base.summary ? "in the baseline only" : "in the results only");
  } else {
    const double fb = float_top1(base), fc = float_top1(cur);
    if (!std::isnan(fb) || !std::isnan(fc)) check.top1("summary.json", "float32 network", fb, fc);
    const double fb5 = float_top5(base), fc5 = float_top5(cur);
    if (!std::isnan(fb5) && !std::isnan(fc5)) {
      check.top5("summary.json", "float32 network", fb5, fc5);
    } else if (std::isnan(fb5) != std::isnan(fc5)) {
      r.context.push_back(fmt::format("the float32 network's top-5 is not compared: only the {} summary.json has "
                                      "it (earlier qsweep versions did not write it)",
                                      std::isnan(fb5) ? "results'" : "baseline's"));
    }
  }
  const std::pair<const char*, bool> tables[] = {{"layerwise.csv", base.layerwise && cur.layerwise},
                                                 {"additivity.csv", base.additivity && cur.additivity},
                                                 {"comparison.csv", base.comparison && cur.comparison}};
  const std::pair<bool, bool> present[] = {{base.layerwise.has_value(), cur.layerwise.has_value()},
                                           {base.additivity.has_value(), cur.additivity.has_value()},
                                           {base.comparison.has_value(), cur.comparison.has_value()}};
  for (size_t i = 0; i < 3; ++i) {
    const auto [name, both] = tables[i];
    if (both) {
      check.tables(base, cur, name);
    } else if (present[i].first) {
      check.row(name, "the whole table", "in the baseline only");
    } else if (present[i].second) {
      check.row(name, "the whole table", "in the results only");
    }
  }
  return r;
}

std::string format_check(const CheckResult& r, const CheckOptions& options) {
  std::string s = fmt::format("qsweep check: {}\n  against the baseline {}\n", r.current.string(), r.baseline.string());
  s += fmt::format("  results : {}\n  baseline: {}\n", r.current_about, r.baseline_about);
  s += fmt::format("  tolerances: {}\n", tolerance_text(options));
  if (!r.context.empty()) {
    s += "  what differs besides the numbers:\n";
    for (const auto& c : r.context) s += "    " + c + "\n";
  }
  if (r.passed()) return s + r.verdict(options) + "\n";
  size_t tw = 5, rw = 3;
  const size_t shown = std::min(r.moved.size(), static_cast<size_t>(std::max(options.show, 0)));
  for (size_t i = 0; i < shown; ++i) {
    tw = std::max(tw, r.moved[i].table.size());
    rw = std::max(rw, r.moved[i].row.size());
  }
  s += fmt::format("  {:<{}}  {:<{}}  {:<8}  {:>12}  {:>12}  {}\n", "table", tw, "row", rw, "quantity", "baseline",
                   "results", "change");
  for (size_t i = 0; i < shown; ++i) {
    const CheckRow& m = r.moved[i];
    s += fmt::format("  {:<{}}  {:<{}}  {:<8}  {:>12}  {:>12}  {}\n", m.table, tw, m.row, rw, m.quantity,
                     number_text(m, m.baseline), number_text(m, m.current), change_text(m));
  }
  if (shown < r.moved.size())
    s += fmt::format("  ... and {} more (--json FILE lists every one)\n", r.moved.size() - shown);
  return s + r.verdict(options) + "\n";
}

size_t CheckResult::moved_numbers() const {
  return static_cast<size_t>(
      std::count_if(moved.begin(), moved.end(), [](const CheckRow& m) { return m.quantity != "row"; }));
}

std::string CheckResult::verdict(const CheckOptions& o) const {
  if (passed()) {
    return fmt::format(
        "OK: all {} numbers within tolerance (largest moves: top-1 {:.2f} points, top-5 {:.2f} points, noise {:.3g} "
        "relative)",
        compared, max_top1_move, max_top5_move, max_noise_move);
  }
  const size_t numbers = moved_numbers(), rows = moved.size() - numbers;
  std::string s = fmt::format("MOVED: {} of {} numbers beyond tolerance ({})", numbers, compared, tolerance_text(o));
  if (rows > 0)
    s += fmt::format(", and {} {} not match (on one side only, or from other images or layers)", rows,
                     rows == 1 ? "row or table does" : "rows or tables do");
  return s;
}

namespace {

// report.h's html_escape (its entities are XML's too), after dropping the control characters
// XML 1.0 does not allow (all but tab, LF and CR).
std::string xml_escape(const std::string& s) {
  std::string kept;
  for (const char c : s) {
    if (static_cast<unsigned char>(c) >= 0x20 || c == '\t' || c == '\n' || c == '\r') kept += c;
  }
  return html_escape(kept);
}

}  // namespace

std::string check_junit(const CheckResult& r, const CheckOptions& options) {
  std::map<std::pair<std::string, std::string>, std::vector<const CheckRow*>> moved;
  for (const auto& m : r.moved) moved[{m.table, m.row}].push_back(&m);
  size_t failures = 0;
  for (const auto& tr : r.rows) failures += moved.count(tr) ? 1 : 0;
  std::string s = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
  s += fmt::format("<testsuites name=\"qsweep check\" tests=\"{}\" failures=\"{}\">\n", r.rows.size(), failures);
  s += fmt::format("  <testsuite name=\"{}\" tests=\"{}\" failures=\"{}\">\n", xml_escape(r.current.string()),
                   r.rows.size(), failures);
  s += fmt::format(
      "    <properties><property name=\"baseline\" value=\"{}\"/><property name=\"tolerances\" "
      "value=\"{}\"/></properties>\n",
      xml_escape(r.baseline.string()), xml_escape(tolerance_text(options)));
  for (const auto& tr : r.rows) {
    s += fmt::format("    <testcase classname=\"{}\" name=\"{}\"", xml_escape(tr.first), xml_escape(tr.second));
    const auto it = moved.find(tr);
    if (it == moved.end()) {
      s += "/>\n";
      continue;
    }
    std::string text;
    for (const CheckRow* m : it->second) {
      text += m->quantity == "row" ? m->detail
                                   : fmt::format("{}: {} -> {} ({})", m->quantity, number_text(*m, m->baseline),
                                                 number_text(*m, m->current), change_text(*m));
      text += "\n";
    }
    s += fmt::format(">\n      <failure message=\"{}\">{}</failure>\n    </testcase>\n",
                     xml_escape(text.substr(0, text.find('\n'))), xml_escape(text));
  }
  return s + "  </testsuite>\n</testsuites>\n";
}

json check_json(const CheckResult& r, const CheckOptions& options) {
  auto num = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
  json moved = json::array();
  for (const auto& m : r.moved) {
    json j = {{"table", m.table}, {"row", m.row}, {"quantity", m.quantity}};
    if (m.quantity == "row") {
      j["detail"] = m.detail;
    } else {
      j["baseline"] = num(m.baseline);
      j["results"] = num(m.current);
    }
    moved.push_back(std::move(j));
  }
  return json{{"passed", r.passed()},
              {"results", r.current.string()},
              {"baseline", r.baseline.string()},
              {"tolerances",
               {{"top1_points", options.top1_tol},
                {"top5_points", options.top5_tol},
                {"noise_relative", options.noise_rtol}}},
              {"compared", r.compared},
              {"max_top1_move_points", r.max_top1_move},
              {"max_top5_move_points", r.max_top5_move},
              {"max_noise_move_relative", r.max_noise_move},
              {"context", r.context},
              {"moved", std::move(moved)}};
}

}  // namespace qsweep
