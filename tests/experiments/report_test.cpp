// Figures and report.html (experiments/report.h) on a small fixed results folder
// (tests/data/report_fixture, written by its make_fixture.py) and on generated ones.
#include "experiments/report.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "runtime/data.h"
#include "runtime/error.h"
#include "tests/shipped_models.h"

namespace qsweep {
namespace {

namespace fs = std::filesystem;

// Every figure the fixture's files call for.
const std::vector<std::string> kFixtureFigures = {"heatmap_degradation",  "heatmap_noise",          "layer_bars",
                                                  "noise_vs_degradation", "additivity_degradation", "additivity_noise",
                                                  "comparison",           "weight_histogram"};
// A figure smaller than this is blank or broken; one larger is not a sensible figure.
constexpr int kMinFigurePixels = 200;
constexpr int kMaxFigurePixels = 12000;
constexpr uintmax_t kMinImageBytes = 4000;
// At least this many pixels per layer row, so 60+ layer names stay legible.
constexpr int kMinPixelsPerLayerRow = 16;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool gnuplot_on_path() { return std::system("command -v gnuplot >/dev/null 2>&1") == 0; }

// RFC 4180 rows (the fixture quotes a name holding a comma and quotes).
std::vector<std::vector<std::string>> read_csv(const fs::path& p) {
  std::vector<std::vector<std::string>> rows;
  const std::string text = slurp(p);
  std::vector<std::string> row;
  std::string field;
  bool quoted = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (quoted) {
      if (c == '"' && i + 1 < text.size() && text[i + 1] == '"')
        field += text[++i];
      else if (c == '"')
        quoted = false;
      else
        field += c;
    } else if (c == '"') {
      quoted = true;
    } else if (c == ',') {
      row.push_back(field);
      field.clear();
    } else if (c == '\n') {
      row.push_back(field);
      rows.push_back(row);
      row.clear();
      field.clear();
    } else {
      field += c;
    }
  }
  return rows;
}

// Column name -> value, one map per data row.
std::vector<std::map<std::string, std::string>> csv_records(const fs::path& p) {
  const auto rows = read_csv(p);
  std::vector<std::map<std::string, std::string>> out;
  for (size_t i = 1; i < rows.size(); ++i) {
    std::map<std::string, std::string> m;
    for (size_t c = 0; c < rows[0].size() && c < rows[i].size(); ++c) m[rows[0][c]] = rows[i][c];
    out.push_back(m);
  }
  return out;
}

// A figure's data file: the column names from its "# a\tb" first line, then one map per data
// line (blank lines and other comments skipped).
std::vector<std::map<std::string, std::string>> dat_records(const fs::path& p) {
  std::istringstream in(slurp(p));
  std::string line;
  std::getline(in, line);
  EXPECT_EQ(line.rfind("# ", 0), 0u) << p;
  std::vector<std::string> names;
  std::istringstream header(line.substr(2));
  for (std::string n; std::getline(header, n, '\t');) names.push_back(n);
  std::vector<std::map<std::string, std::string>> out;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::map<std::string, std::string> m;
    std::istringstream fields(line);
    size_t c = 0;
    for (std::string f; std::getline(fields, f, '\t'); ++c) {
      if (c < names.size()) m[names[c]] = f;
    }
    EXPECT_EQ(c, names.size()) << p << ": " << line;
    out.push_back(m);
  }
  return out;
}

struct PngSize {
  int width = 0, height = 0;
};
// The IHDR of a PNG, after checking the signature.
std::optional<PngSize> png_size(const fs::path& p) {
  const std::string s = slurp(p);
  if (s.size() < 24 || s.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0 || s.compare(12, 4, "IHDR") != 0) return std::nullopt;
  auto be32 = [&](size_t at) {
    return (static_cast<unsigned char>(s[at]) << 24) | (static_cast<unsigned char>(s[at + 1]) << 16) |
           (static_cast<unsigned char>(s[at + 2]) << 8) | static_cast<unsigned char>(s[at + 3]);
  };
  return PngSize{static_cast<int>(be32(16)), static_cast<int>(be32(20))};
}

class Report : public ::testing::Test {
 protected:
  void SetUp() override {
    tmp_ = fs::temp_directory_path() / ("qsweep_report_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(tmp_);
    fs::create_directories(tmp_);
  }
  void TearDown() override { fs::remove_all(tmp_); }

  // A copy of the fixture folder (the tests write into it).
  fs::path fixture() {
    const fs::path dir = tmp_ / "fixture";
    fs::remove_all(dir);
    fs::copy(fs::path(QSWEEP_SOURCE_DIR) / "tests/data/report_fixture", dir, fs::copy_options::recursive);
    return dir;
  }
  fs::path tmp_;
};

ReportOptions no_plots() {
  ReportOptions o;
  o.plots = false;
  return o;
}

TEST(ReportHtml, EscapesSpecialCharacters) {
  EXPECT_EQ(html_escape("a<b> & \"c\" 'd'"), "a&lt;b&gt; &amp; &quot;c&quot; &#39;d&#39;");
}

TEST_F(Report, FixtureDrawsEveryFigureAsValidPngAndSvg) {
  if (!gnuplot_on_path()) GTEST_SKIP() << "gnuplot is not installed (Debian: gnuplot-nox)";
  const fs::path dir = fixture();
  const ReportResult r = write_report(dir, ReportOptions{});
  EXPECT_TRUE(r.warnings.empty()) << r.warnings.front();
  EXPECT_FALSE(r.gnuplot_missing);
  EXPECT_EQ(std::set<std::string>(r.drawn.begin(), r.drawn.end()),
            std::set<std::string>(kFixtureFigures.begin(), kFixtureFigures.end()));
  for (const auto& stem : kFixtureFigures) {
    const fs::path png = dir / "figures" / (stem + ".png"), svg = dir / "figures" / (stem + ".svg");
    for (const auto& ext : {".dat", ".gp"}) EXPECT_TRUE(fs::exists(dir / "figures" / (stem + ext))) << stem << ext;
    const auto size = png_size(png);
    ASSERT_TRUE(size) << png << " is not a PNG";
    EXPECT_GE(size->width, kMinFigurePixels) << stem;
    EXPECT_GE(size->height, kMinFigurePixels) << stem;
    EXPECT_LE(size->width, kMaxFigurePixels) << stem;
    EXPECT_LE(size->height, kMaxFigurePixels) << stem;
    EXPECT_GE(fs::file_size(png), kMinImageBytes) << stem;
    const std::string s = slurp(svg);
    EXPECT_NE(s.find("<svg"), std::string::npos) << stem;
    EXPECT_NE(s.find("</svg>"), std::string::npos) << stem;
    EXPECT_GE(s.size(), kMinImageBytes) << stem;
  }
  // The special characters in a layer name reach the figure as text, not as markup.
  const std::string svg = slurp(dir / "figures/heatmap_degradation.svg");
  EXPECT_NE(svg.find("odd &lt;name"), std::string::npos);
  EXPECT_NE(svg.find("&amp; 'quotes', commas"), std::string::npos);
}

TEST_F(Report, HeatmapAndBarDataHoldExactlyTheCsvNumbers) {
  const fs::path dir = fixture();
  write_report(dir, no_plots());
  const auto csv = csv_records(dir / "layerwise.csv");
  ASSERT_EQ(csv.size(), 18u);
  std::map<std::pair<std::string, std::string>, std::map<std::string, std::string>> by_cell;
  for (const auto& row : csv) by_cell[{row.at("layer_index"), row.at("weight_bits")}] = row;

  for (const std::string metric : {"degradation", "noise"}) {
    const auto dat = dat_records(dir / "figures" / ("heatmap_" + metric + ".dat"));
    ASSERT_EQ(dat.size(), csv.size()) << metric;
    for (const auto& d : dat) {
      const auto& row = by_cell.at({d.at("layer_index"), d.at("weight_bits")});
      EXPECT_EQ(d.at(metric), row.at(metric)) << metric << " layer " << d.at("layer_index");
    }
  }
  // The bars: every layer at the lowest bit-width, the three worst ranked as summary.json has them.
  const auto bars = dat_records(dir / "figures/layer_bars.dat");
  ASSERT_EQ(bars.size(), 6u);
  const auto summary = nlohmann::json::parse(slurp(dir / "summary.json"));
  std::map<std::string, int> rank;
  for (size_t i = 0; i < summary["worst_layers"]["3"].size(); ++i) {
    rank[std::to_string(summary["worst_layers"]["3"][i]["layer_index"].get<int>())] = static_cast<int>(i) + 1;
  }
  for (const auto& d : bars) {
    const auto& row = by_cell.at({d.at("layer_index"), "3"});
    EXPECT_EQ(d.at("weight_bits"), "3");
    EXPECT_EQ(d.at("degradation"), row.at("degradation"));
    EXPECT_EQ(d.at("noise"), row.at("noise"));
    EXPECT_EQ(d.at("worst_rank"), std::to_string(rank.count(d.at("layer_index")) ? rank[d.at("layer_index")] : 0));
  }
  const auto scatter = dat_records(dir / "figures/noise_vs_degradation.dat");
  ASSERT_EQ(scatter.size(), csv.size());
  std::map<std::string, std::string> labelled;  // rank -> layer@bits
  for (const auto& d : scatter) {
    const auto& row = by_cell.at({d.at("layer_index"), d.at("weight_bits")});
    EXPECT_EQ(d.at("noise"), row.at("noise"));
    EXPECT_EQ(d.at("degradation"), row.at("degradation"));
    if (d.at("label_rank") != "0") labelled[d.at("label_rank")] = d.at("layer_index") + "@" + d.at("weight_bits");
  }
  // The five most degrading cells: 6.8 (0@3), 2.7 (2@3), 1.9 (0@4), 0.9 (3@3), 0.6 (2@4).
  EXPECT_EQ(labelled,
            (std::map<std::string, std::string>{{"1", "0@3"}, {"2", "2@3"}, {"3", "0@4"}, {"4", "3@3"}, {"5", "2@4"}}));
}

TEST_F(Report, AdditivityAndComparisonDataHoldExactlyTheCsvNumbers) {
  const fs::path dir = fixture();
  write_report(dir, no_plots());
  const auto add = csv_records(dir / "additivity.csv");
  for (const std::string q : {"degradation", "noise"}) {
    const auto dat = dat_records(dir / "figures" / ("additivity_" + q + ".dat"));
    ASSERT_EQ(dat.size(), add.size()) << q;
    for (size_t i = 0; i < dat.size(); ++i) {
      EXPECT_EQ(dat[i].at("config_index"), add[i].at("config_index"));
      EXPECT_EQ(dat[i].at("num_low_layers"), add[i].at("num_low_layers"));
      EXPECT_EQ(dat[i].at("predicted_" + q), add[i].at("predicted_" + q));
      EXPECT_EQ(dat[i].at("measured_" + q), add[i].at("measured_" + q));
      EXPECT_EQ(dat[i].at("ci_low"), add[i].at("ci_low"));
      EXPECT_EQ(dat[i].at("ci_high"), add[i].at("ci_high"));
    }
  }
  // r and slope in the legend are the ones summary.json reports.
  const std::string gp = slurp(dir / "figures/additivity_degradation.gp");
  EXPECT_NE(gp.find("r = 0.987\n"), std::string::npos) << gp;
  EXPECT_NE(gp.find("slope = 1.04\n"), std::string::npos) << gp;
  EXPECT_NE(gp.find("sprintf(\"measured (r = %.3f, slope = %.3f)\", r, slope)"), std::string::npos);

  const auto cmp = csv_records(dir / "comparison.csv");
  const auto dat = dat_records(dir / "figures/comparison.dat");
  ASSERT_EQ(dat.size(), cmp.size());
  for (size_t i = 0; i < dat.size(); ++i) {
    for (const char* k : {"variant", "top1", "degradation", "noise", "ci_low", "ci_high"}) {
      EXPECT_EQ(dat[i].at(k), cmp[i].at(k)) << k << " of " << cmp[i].at("variant");
    }
  }
}

TEST_F(Report, HistogramCountsEveryWeightAndDrawsTheRange) {
  const fs::path dir = fixture();
  write_report(dir, no_plots());
  const std::string dat = slurp(dir / "figures/weight_histogram.dat");
  // One data set per worst layer at 3 bits, in order: 0, 2, 3.
  std::vector<long long> totals;
  std::vector<std::string> headers;
  std::istringstream in(dat);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("# layer ", 0) == 0) {
      headers.push_back(line);
      totals.push_back(0);
    } else if (!line.empty() && line[0] != '#') {
      totals.back() += std::stoll(line.substr(line.rfind('\t') + 1));
    }
  }
  ASSERT_EQ(headers.size(), 3u);
  EXPECT_EQ(headers[0].rfind("# layer 0 /conv1/Conv", 0), 0u) << headers[0];
  EXPECT_EQ(headers[1].rfind("# layer 2 odd", 0), 0u) << headers[1];
  EXPECT_EQ(headers[2].rfind("# layer 3 ", 0), 0u) << headers[2];
  for (size_t k = 0; k < 3; ++k) EXPECT_EQ(totals[k], 288) << headers[k];  // every weight in exactly one bin
  // Layer 2's range is clipped to [-0.25, 0.25] in layers.csv: both the range and the weight
  // maximum it cuts off are drawn.
  const std::string gp = slurp(dir / "figures/weight_histogram.gp");
  EXPECT_NE(gp.find("set arrow from -0.25, graph 0"), std::string::npos);
  EXPECT_NE(gp.find("set arrow from 0.25, graph 0"), std::string::npos);
  EXPECT_NE(gp.find("\"weight max "), std::string::npos);
  EXPECT_NE(gp.find("set logscale y"), std::string::npos);
}

TEST_F(Report, PageLinksResolveInsideTheFolderAndCarryTheCommit) {
  const fs::path dir = fixture();
  write_report(dir, gnuplot_on_path() ? ReportOptions{} : no_plots());
  const std::string html = slurp(dir / "report.html");
  const auto manifest = nlohmann::json::parse(slurp(dir / "manifest.json"));
  EXPECT_NE(html.find(manifest["git_commit"].get<std::string>()), std::string::npos);
  EXPECT_NE(html.find("qsweep report " + dir.string()), std::string::npos);
  EXPECT_NE(html.find("91.30%"), std::string::npos);  // the float32 accuracy
  // Nothing from the network, nothing that needs JavaScript.
  EXPECT_EQ(html.find("<script"), std::string::npos);
  EXPECT_EQ(html.find("http://"), std::string::npos);
  EXPECT_EQ(html.find("https://"), std::string::npos);
  // Layer names are escaped.
  EXPECT_NE(html.find("odd &lt;name&gt; &amp; &quot;quotes&quot;, commas"), std::string::npos);
  EXPECT_EQ(html.find("odd <name>"), std::string::npos);
  // Every link and image is a relative path to a file in the folder.
  const std::regex link("(?:href|src)=\"([^\"]*)\"");
  std::set<std::string> targets;
  for (auto it = std::sregex_iterator(html.begin(), html.end(), link); it != std::sregex_iterator(); ++it) {
    const std::string t = (*it)[1];
    if (t.rfind("#", 0) == 0) continue;  // in-page anchor
    targets.insert(t);
    EXPECT_FALSE(fs::path(t).is_absolute()) << t;
    EXPECT_EQ(t.find(".."), std::string::npos) << t;
    EXPECT_TRUE(fs::is_regular_file(dir / t)) << t;
  }
  for (const char* f : {"layerwise.csv", "manifest.json", "config.toml", "figures/heatmap_degradation.dat",
                        "figures/heatmap_degradation.gp", "figures/weight_histogram.gp"}) {
    EXPECT_TRUE(targets.count(f)) << f;
  }
  if (gnuplot_on_path()) {
    for (const auto& stem : kFixtureFigures) EXPECT_TRUE(targets.count("figures/" + stem + ".png")) << stem;
  }
}

TEST_F(Report, MissingGnuplotIsOneWarningAndThePageSaysHowToDrawThem) {
  const fs::path dir = fixture();
  ReportOptions o;
  o.gnuplot = (tmp_ / "no-such-gnuplot").string();
  const ReportResult r = write_report(dir, o);
  EXPECT_TRUE(r.gnuplot_missing);
  EXPECT_TRUE(r.drawn.empty());
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("figures skipped"), std::string::npos) << r.warnings[0];
  EXPECT_NE(r.warnings[0].find("gnuplot-nox"), std::string::npos) << r.warnings[0];
  EXPECT_NE(r.warnings[0].find("qsweep report " + dir.string()), std::string::npos) << r.warnings[0];
  for (const auto& stem : kFixtureFigures) {
    EXPECT_TRUE(fs::exists(dir / "figures" / (stem + ".gp"))) << stem;
    EXPECT_FALSE(fs::exists(dir / "figures" / (stem + ".png"))) << stem;
  }
  const std::string html = slurp(dir / "report.html");
  EXPECT_EQ(html.find("<img"), std::string::npos);
  EXPECT_NE(html.find("gnuplot was not found"), std::string::npos);
}

TEST_F(Report, FailingGnuplotIsOneWarningAndLeavesNoImage) {
  const fs::path dir = fixture();
  ReportOptions o;
  o.gnuplot = "false";  // runs, fails on every script
  const ReportResult r = write_report(dir, o);
  EXPECT_FALSE(r.gnuplot_missing);
  EXPECT_TRUE(r.drawn.empty());
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("could not draw 8 of 8 figures"), std::string::npos) << r.warnings[0];
  for (const auto& stem : kFixtureFigures) EXPECT_FALSE(fs::exists(dir / "figures" / (stem + ".png"))) << stem;
}

TEST_F(Report, HangingGnuplotIsStoppedAtTheTimeLimit) {
  const fs::path dir = fixture();
  const fs::path fake = tmp_ / "slow-gnuplot";
  std::ofstream(fake) << "#!/bin/sh\nexec sleep 60\n";
  fs::permissions(fake, fs::perms::owner_all);
  ReportOptions o;
  o.gnuplot = fake.string();
  o.gnuplot_timeout_s = 1;
  const ReportResult r = write_report(dir, o);
  EXPECT_TRUE(r.drawn.empty());
  ASSERT_EQ(r.warnings.size(), 1u);
  EXPECT_NE(r.warnings[0].find("still running after 1 s"), std::string::npos) << r.warnings[0];
}

// A generated folder of 64 layers with long, ResNeXt-like names: every row keeps its height,
// tick labels stay short, and the shared prefix is left out of them.
TEST_F(Report, SixtyFourLayersStayReadable) {
  constexpr int kLayers = 64;
  const fs::path dir = tmp_ / "r64";
  fs::create_directories(dir);
  std::ofstream csv(dir / "layerwise.csv");
  csv << "layer_index,layer_name,op_type,weight_bits,act_bits,noise,sqnr_db,top1,degradation,correct,images,"
         "float_top1\n";
  for (int i = 0; i < kLayers; ++i) {
    const std::string name = "resnext26_32x4d/stage" + std::to_string(i / 16 + 1) + "/unit" + std::to_string(i % 16) +
                             "/grouped_convolution_with_a_long_name_" + std::to_string(i) + "/Conv";
    for (int b : {3, 4, 5, 6, 7, 8}) {
      const double deg = (i % 7) * 0.7 / (b - 2);
      csv << i << "," << name << ",Conv," << b << ",8," << 1.0 / (b * b + i) << ",20.0," << 76.0 - deg << "," << deg
          << ",0,50000,76.0\n";
    }
  }
  csv.close();
  std::ofstream(dir / "summary.json") << R"({"kind": "layerwise", "images": 50000})";
  std::ofstream stats(dir / "layers.csv");
  stats << "layer_index,layer_name,op_type,weight_min,weight_max,range_min,range_max,clip_fraction,kurtosis,"
           "channel_range_spread\n";
  for (int i = 0; i < kLayers; ++i) stats << i << ",l" << i << ",Conv,-1,1,-1,1,0,3,1\n";
  stats.close();
  const ReportResult r = write_report(dir, gnuplot_on_path() ? ReportOptions{} : no_plots());
  const auto dat = dat_records(dir / "figures/heatmap_degradation.dat");
  ASSERT_EQ(dat.size(), 64u * 6u);
  for (const auto& d : dat) {
    EXPECT_EQ(d.at("label").find("resnext26_32x4d/"), std::string::npos) << d.at("label");
    EXPECT_LE(d.at("label").size(), 50u) << d.at("label");  // 40 characters, the index, one "…"
  }
  EXPECT_NE(slurp(dir / "figures/heatmap_degradation.gp").find("layer names after 'resnext26_32x4d/'"),
            std::string::npos);
  if (!gnuplot_on_path()) GTEST_SKIP() << "gnuplot is not installed: image sizes not checked";
  EXPECT_TRUE(r.warnings.empty()) << r.warnings.front();
  for (const char* stem : {"heatmap_degradation", "heatmap_noise", "layer_bars"}) {
    const auto size = png_size(dir / "figures" / (std::string(stem) + ".png"));
    ASSERT_TRUE(size) << stem;
    EXPECT_GE(size->height, kLayers * kMinPixelsPerLayerRow) << stem;
    EXPECT_LE(size->height, kMaxFigurePixels) << stem;
  }
}

// A comparison run (kind = "full") has no grid: the report draws what it has.
TEST_F(Report, ComparisonOnlyFolderGetsItsChartAndTable) {
  const fs::path dir = fixture();
  for (const char* f : {"layerwise.csv", "additivity.csv"}) fs::remove(dir / f);
  fs::remove_all(dir / "weights");
  auto summary = nlohmann::json::parse(slurp(dir / "summary.json"));
  summary["kind"] = "full";  // a comparison's folder
  std::ofstream(dir / "summary.json") << summary.dump();
  const ReportResult r = write_report(dir, no_plots());
  EXPECT_EQ(r.figures, std::vector<std::string>{"comparison"});
  const std::string html = slurp(dir / "report.html");
  EXPECT_NE(html.find("id=\"comparison-table\""), std::string::npos);
  EXPECT_NE(html.find("91.30%"), std::string::npos);  // from summary.json
}

TEST_F(Report, FolderWithoutResultsIsAUserError) { EXPECT_THROW(write_report(tmp_, ReportOptions{}), UserError); }

// A damaged folder is one sentence naming the file (and line and column where there is one),
// not a report drawn from part of the table (audit: a cut layerwise.csv drew 13 of 60 cells,
// 'abc' went into the figures, a missing summary.json gave an untitled page, all exit 0).
// A backslash in a layer name reaches the figures (audit: gnuplot's data reader dropped it,
// drawing "back\slash" as "backslash"): the data files write it twice, gnuplot reads one.
TEST_F(Report, BackslashesInNamesReachTheFigures) {
  const fs::path dir = fixture();
  for (const char* f : {"layerwise.csv", "layers.csv", "summary.json", "comparison.csv"}) {
    std::string t = slurp(dir / f);
    const std::string to = std::string(f) == "summary.json" ? "/conv1\\\\x/Conv" : "/conv1\\x/Conv";
    for (size_t at = t.find("/conv1/Conv"); at != std::string::npos; at = t.find("/conv1/Conv", at + to.size())) {
      t.replace(at, 11, to);
    }
    std::ofstream(dir / f, std::ios::trunc) << t;
  }
  // A variant name too: its label is escaped once (review: twice, drawn as "min\\max").
  std::string cmp = slurp(dir / "comparison.csv");
  cmp.replace(cmp.find("\nminmax,"), 8, "\nmin\\max,");
  std::ofstream(dir / "comparison.csv", std::ios::trunc) << cmp;
  const ReportResult r = write_report(dir, gnuplot_on_path() ? ReportOptions{} : no_plots());
  const std::string dat = slurp(dir / "figures/heatmap_degradation.dat");
  EXPECT_NE(dat.find("conv1\\\\x/Conv"), std::string::npos) << dat.substr(0, 400);
  const std::string cdat = slurp(dir / "figures/comparison.dat");
  EXPECT_NE(cdat.find("\tmin\\\\max\n"), std::string::npos) << cdat;
  EXPECT_EQ(cdat.find("min\\\\\\\\max"), std::string::npos) << cdat;
  if (!gnuplot_on_path()) GTEST_SKIP() << "gnuplot is not installed: the drawn label not checked";
  ASSERT_TRUE(std::find(r.drawn.begin(), r.drawn.end(), "heatmap_degradation") != r.drawn.end());
  const std::string svg = slurp(dir / "figures/heatmap_degradation.svg");
  EXPECT_NE(svg.find("conv1\\x/Conv"), std::string::npos);
  EXPECT_EQ(svg.find("conv1x/Conv"), std::string::npos);
}

// Temp files of a report or run killed outright (SIGKILL) are removed by the next report once
// 10 minutes old; those of a process still running, or younger, are not.
TEST_F(Report, TempFilesOfDeadProcessesAreRemoved) {
  const fs::path dir = fixture();
  fs::create_directories(dir / "figures");
  const std::string live = std::to_string(getppid());  // alive, and not this process (whose own temp names these are)
  const std::vector<std::string> dead = {".gnuplot-999999999.err", ".heatmap_noise.dat.tmp999999999",
                                         ".report.html.tmp999999999"};
  const std::vector<std::string> kept = {".gnuplot-" + live + ".err", ".layer_bars.gp.tmp" + live, ".notes",
                                         ".x.tmpabc"};
  // An hour old, but one of a dead process written just now (another host's, perhaps).
  const auto hour_ago = fs::file_time_type::clock::now() - std::chrono::hours(1);
  for (const auto& f : dead) std::ofstream(dir / "figures" / f) << "x";
  for (const auto& f : kept) std::ofstream(dir / "figures" / f) << "x";
  std::ofstream(dir / ".summary.json.tmp999999999") << "x";
  for (const auto& f : dead) fs::last_write_time(dir / "figures" / f, hour_ago);
  for (const auto& f : kept) fs::last_write_time(dir / "figures" / f, hour_ago);
  fs::last_write_time(dir / ".summary.json.tmp999999999", hour_ago);
  std::ofstream(dir / "figures" / ".young.dat.tmp999999998") << "x";
  write_report(dir, no_plots());
  for (const auto& f : dead) EXPECT_FALSE(fs::exists(dir / "figures" / f)) << f;
  for (const auto& f : kept) EXPECT_TRUE(fs::exists(dir / "figures" / f)) << f;
  EXPECT_FALSE(fs::exists(dir / ".summary.json.tmp999999999"));
  EXPECT_TRUE(fs::exists(dir / "figures" / ".young.dat.tmp999999998"));
}

TEST_F(Report, DamagedTablesAndSummariesAreOneSentenceErrors) {
  auto message = [&](const std::function<void(const fs::path&)>& damage) -> std::string {
    const fs::path dir = fixture();
    damage(dir);
    try {
      write_report(dir, no_plots());
    } catch (const UserError& e) {
      return e.what();
    }
    return "no error";
  };
  auto edit_field = [](const fs::path& file, int line, const std::string& column, const std::string& value) {
    std::istringstream in(slurp(file));
    std::string text, l;
    for (int i = 1; std::getline(in, l); ++i) {
      if (i == line) {
        std::vector<std::string> f;
        std::string field;
        for (std::istringstream ls(l); std::getline(ls, field, ',');) f.push_back(field);
        std::istringstream hs(slurp(file).substr(0, slurp(file).find('\n')));
        int c = 0;
        for (std::string h; std::getline(hs, h, ',') && h != column;) ++c;
        f.at(c) = value;
        l.clear();
        for (size_t k = 0; k < f.size(); ++k) l += (k ? "," : "") + f[k];
      }
      text += l + "\n";
    }
    std::ofstream(file) << text;
  };
  const std::string lw = "/layerwise.csv";
  // Cut inside a row, and at a row boundary (well-formed: only summary.json's count tells).
  EXPECT_NE(message([](const fs::path& d) {
              const std::string t = slurp(d / "layerwise.csv");
              std::ofstream(d / "layerwise.csv") << t.substr(0, t.size() / 2);
            }).find("fields where the header has"),
            std::string::npos);
  const std::string cut = message([](const fs::path& d) {
    const std::string t = slurp(d / "layerwise.csv");
    std::ofstream(d / "layerwise.csv") << t.substr(0, t.find('\n', t.find('\n') + 1) + 1);  // the header and one row
  });
  EXPECT_NE(cut.find(lw + ": 1 rows, but summary.json lists "), std::string::npos) << cut;
  const std::string abc = message([&](const fs::path& d) { edit_field(d / "layerwise.csv", 2, "noise", "abc"); });
  EXPECT_NE(abc.find(lw + ", line 2: column 'noise' holds 'abc', not a number"), std::string::npos) << abc;
  const std::string index = message([&](const fs::path& d) { edit_field(d / "layerwise.csv", 2, "layer_index", "x"); });
  EXPECT_NE(index.find(lw + ", line 2: column 'layer_index' holds 'x', not a whole number"), std::string::npos) << index;
  const std::string no_summary = message([](const fs::path& d) { fs::remove(d / "summary.json"); });
  EXPECT_NE(no_summary.find("has no summary.json: not a complete qsweep results folder"), std::string::npos) << no_summary;
  const std::string array = message([](const fs::path& d) { std::ofstream(d / "summary.json") << "[1]"; });
  EXPECT_NE(array.find("summary.json: not a qsweep summary.json (a JSON object)"), std::string::npos) << array;
  const std::string no_add = message([](const fs::path& d) {
    auto s = nlohmann::json::parse(slurp(d / "summary.json"));
    s["kind"] = "additivity";
    std::ofstream(d / "summary.json") << s.dump();
    fs::remove(d / "additivity.csv");
  });
  EXPECT_NE(no_add.find("has no additivity.csv, which a kind = \"additivity\" run writes"), std::string::npos) << no_add;
  const std::string empty_cmp = message([](const fs::path& d) {
    const std::string t = slurp(d / "comparison.csv");
    std::ofstream(d / "comparison.csv") << t.substr(0, t.find('\n') + 1);
  });
  EXPECT_NE(empty_cmp.find("comparison.csv: 0 rows, but summary.json lists"), std::string::npos) << empty_cmp;
  // layers.csv, which every kind writes (audit: a missing, cut or hand-edited one drew a
  // report without its statistics, or with them, and histogram ranges from another rule).
  const std::string no_stats = message([](const fs::path& d) { fs::remove(d / "layers.csv"); });
  EXPECT_NE(no_stats.find("has no layers.csv, which a kind = \"layerwise\" run writes"), std::string::npos) << no_stats;
  const std::string short_stats = message([](const fs::path& d) {
    const std::string t = slurp(d / "layers.csv");
    std::ofstream(d / "layers.csv") << t.substr(0, t.find('\n', t.find('\n', t.find('\n') + 1) + 1) + 1);  // 2 rows
  });
  EXPECT_NE(short_stats.find("/layers.csv: rows for 2 of the 6 layers summary.json lists; the table was cut or edited"),
            std::string::npos)
      << short_stats;
  const std::string twice = message([](const fs::path& d) {
    const std::string t = slurp(d / "layers.csv");
    const size_t row1 = t.find('\n') + 1;
    std::ofstream(d / "layers.csv") << t + t.substr(row1, t.find('\n', row1) + 1 - row1);  // row 1 again, at the end
  });
  EXPECT_NE(twice.find("/layers.csv, line 8: a second row for layer 0, but summary.json lists layers 0..5"),
            std::string::npos)
      << twice;
  // There but not readable (a symlink loop here; permissions do not bind root, who runs CI):
  // said so, not "missing".
  const std::string loop = message([](const fs::path& d) {
    fs::remove(d / "layerwise.csv");
    fs::create_symlink("layerwise.csv", d / "layerwise.csv");
  });
  EXPECT_NE(loop.find("cannot read '"), std::string::npos) << loop;
  EXPECT_NE(loop.find("layerwise.csv': Too many levels of symbolic links"), std::string::npos) << loop;
  const std::string xx = message([&](const fs::path& d) { edit_field(d / "layers.csv", 2, "weight_min", "xx"); });
  EXPECT_NE(xx.find("/layers.csv, line 2: column 'weight_min' holds 'xx', not a number"), std::string::npos) << xx;
  EXPECT_EQ(message([](const fs::path&) {}), "no error");
}

struct CliRun {
  int code;
  std::string out, err;
};

CliRun run_cli(const fs::path& tmp, const std::string& args) {
  const std::string cmd = args + " >" + (tmp / "out").string() + " 2>" + (tmp / "err").string();
  const int st = std::system(cmd.c_str());
  return CliRun{WIFEXITED(st) ? WEXITSTATUS(st) : -1, slurp(tmp / "out"), slurp(tmp / "err")};
}

TEST_F(Report, ReportCommandRedrawsFromTheFolderAlone) {
  const fs::path dir = fixture();
  const CliRun r = run_cli(tmp_, std::string(QSWEEP_BINARY) + " report " + dir.string() + " --saturate 2");
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::exists(dir / "report.html"));
  EXPECT_NE(slurp(dir / "figures/heatmap_degradation.gp").find("saturate = 2\n"), std::string::npos);
  EXPECT_NE(r.out.find("report: " + (dir / "report.html").string()), std::string::npos) << r.out;
  const CliRun missing = run_cli(tmp_, std::string(QSWEEP_BINARY) + " report " + (tmp_ / "nope").string());
  EXPECT_EQ(missing.code, 2);
  EXPECT_NE(missing.err.find("does not exist"), std::string::npos) << missing.err;
}

// The run itself without gnuplot on PATH: it succeeds, says so once, and leaves the data,
// scripts, weights and page for `qsweep report` to draw from later.
TEST_F(Report, RunWithoutGnuplotSucceedsAndSaysSoOnce) {
  if (!fs::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  ASSERT_FALSE(testing::shipped_models().empty());
  const std::string cfg = std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml";
  const CliRun r = run_cli(tmp_, "PATH=" + (tmp_ / "empty-path").string() + " " + QSWEEP_BINARY + " run " + cfg +
                                     " --out " + (tmp_ / "res").string() +
                                     " --set data.eval.count=200 --set 'quant.weight_bits=[4,8]'"
                                     " --set data.calibration.count=64 --set 'experiment.name=\"report-test\"'");
  ASSERT_EQ(r.code, 0) << r.err;
  int gnuplot_lines = 0;
  std::istringstream err(r.err);
  for (std::string line; std::getline(err, line);) gnuplot_lines += line.find("gnuplot") != std::string::npos;
  EXPECT_EQ(gnuplot_lines, 1) << r.err;
  std::vector<fs::path> runs;
  for (const auto& e : fs::directory_iterator(tmp_ / "res" / "report-test")) runs.push_back(e.path());
  ASSERT_EQ(runs.size(), 1u);
  const fs::path run = runs[0];
  EXPECT_NE(r.err.find("qsweep report " + run.string()), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(run / "report.html"));
  EXPECT_TRUE(fs::exists(run / "figures/heatmap_degradation.gp"));
  EXPECT_FALSE(fs::exists(run / "figures/heatmap_degradation.png"));
  // The worst layers' weights, whole: numel x 4 bytes each.
  const auto summary = nlohmann::json::parse(slurp(run / "summary.json"));
  ASSERT_EQ(summary["worst_layers"]["4"].size(), 3u);
  for (const auto& w : summary["worst_layers"]["4"]) {
    const int i = w["layer_index"].get<int>();
    int64_t numel = 1;
    for (const auto& d : summary["layers"][i]["weight_shape"]) numel *= d.get<int64_t>();
    const fs::path f = run / "weights" / (std::to_string(i) + ".f32");
    ASSERT_TRUE(fs::exists(f)) << f;
    EXPECT_EQ(fs::file_size(f), static_cast<uintmax_t>(numel * 4)) << f;
  }
  // Later, with gnuplot: the same folder gets its figures.
  if (!gnuplot_on_path()) return;
  const CliRun again = run_cli(tmp_, std::string(QSWEEP_BINARY) + " report " + run.string());
  ASSERT_EQ(again.code, 0) << again.err;
  EXPECT_TRUE(png_size(run / "figures/heatmap_degradation.png"));
  EXPECT_TRUE(png_size(run / "figures/weight_histogram.png"));
}

}  // namespace
}  // namespace qsweep
