// `qsweep check`: results folders against baselines, on hand-written tables whose expected
// verdicts are worked out in the test, and through the binary on real runs.
#include "experiments/check.h"

#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>
#include <tuple>

#include <sys/stat.h>

#include "runtime/data.h"
#include "runtime/error.h"
#include "tests/experiments/cli_harness.h"

namespace qsweep {
namespace {

namespace fs = std::filesystem;

const char* kHeader =
    "layer_index,layer_name,op_type,weight_bits,act_bits,noise,sqnr_db,top1,degradation,correct,images,float_top1,"
    "ci_low,ci_high\n";

// One layerwise.csv row; top1 and degradation follow from `correct` of 10000 images and a
// float32 network with 9295 correct.
std::string cell(int index, const std::string& name, int bits, const std::string& noise, int correct,
                 int images = 10000) {
  const double top1 = 100.0 * correct / images;
  std::ostringstream s;
  s << index << "," << name << ",Conv," << bits << ",8," << noise << ",10.0," << top1 << "," << 92.95 - top1 << ","
    << correct << "," << images << ",92.9500,0,0\n";
  return s.str();
}

class Check : public testing::TempDirTest {
 protected:
  // A results folder with the given files (name -> content).
  fs::path folder(const std::string& name, const std::map<std::string, std::string>& files) {
    const fs::path d = dir_ / name;
    fs::create_directories(d);
    for (const auto& [f, text] : files) std::ofstream(d / f) << text;
    return d;
  }
  // The same grid with a row or value replaced: `rows` are the cells after the header.
  fs::path grid(const std::string& name, const std::string& rows, const std::string& extra_summary = "") {
    return folder(name, {{"layerwise.csv", kHeader + rows},
                         {"summary.json", "{\"float_correct\": 9295, \"images\": 10000" + extra_summary + "}"}});
  }

  // A one-cell grid whose noise is `noise` (as written in the CSV).
  fs::path noise_grid(const std::string& name, const std::string& noise) {
    return grid(name, cell(0, "/conv1/Conv", 3, noise, 8612));
  }

  // The four cells of the baseline grid; base_rows(i, c) replaces the i-th (-1: none) by c.
  static std::string base_rows(int i = -1, const std::string& c = "") {
    const std::string cells[] = {
        cell(0, "/conv1/Conv", 3, "23.2559466", 8612), cell(0, "/conv1/Conv", 4, "8.58095362", 9050),
        cell(1, "/layer1/conv1/Conv", 3, "20.08", 8715), cell(1, "/layer1/conv1/Conv", 4, "1.5", 9201)};
    std::string rows;
    for (int k = 0; k < 4; ++k) rows += k == i ? c : cells[k];
    return rows;
  }
};

TEST_F(Check, IdenticalFoldersPassAndCountEveryNumber) {
  const auto a = grid("a", base_rows()), b = grid("b", base_rows());
  const CheckResult r = check_results(a, b, {});
  EXPECT_TRUE(r.passed());
  EXPECT_EQ(r.compared, 1u + 4u * 2u);  // the float32 top-1, then top-1 and noise of 4 cells
  EXPECT_EQ(r.max_top1_move, 0.0);
  EXPECT_EQ(r.max_noise_move, 0.0);
  EXPECT_EQ(r.verdict({}).rfind("OK: all 9 numbers within tolerance", 0), 0u) << r.verdict({});
}

TEST_F(Check, RowsAreMatchedByNameNotPosition) {
  const std::string rows = base_rows();
  // The same cells, last first.
  const std::string shuffled =
      cell(1, "/layer1/conv1/Conv", 4, "1.5", 9201) + cell(0, "/conv1/Conv", 3, "23.2559466", 8612) +
      cell(1, "/layer1/conv1/Conv", 3, "20.08", 8715) + cell(0, "/conv1/Conv", 4, "8.58095362", 9050);
  EXPECT_TRUE(check_results(grid("a", shuffled), grid("b", rows), {}).passed());
}

TEST_F(Check, OneImageMoreCorrectIsAMoveAtZeroTolerance) {
  const auto base = grid("base", base_rows());
  const auto cur = grid("cur", base_rows(0, cell(0, "/conv1/Conv", 3, "23.2559466", 8613)));
  const CheckResult r = check_results(cur, base, {});
  ASSERT_EQ(r.moved.size(), 1u);
  EXPECT_EQ(r.moved[0].table, "layerwise.csv");
  EXPECT_EQ(r.moved[0].row, "/conv1/Conv, 3-bit weights, 8-bit activations");
  EXPECT_EQ(r.moved[0].quantity, "top-1");
  EXPECT_DOUBLE_EQ(r.moved[0].baseline, 86.12);  // 8612 of 10000, from the counts
  EXPECT_DOUBLE_EQ(r.moved[0].current, 86.13);
  EXPECT_NEAR(r.max_top1_move, 0.01, 1e-12);
  EXPECT_EQ(r.verdict({}).rfind("MOVED: 1 of 9 numbers beyond tolerance", 0), 0u) << r.verdict({});
  const std::string text = format_check(r, {});
  EXPECT_NE(text.find("+0.01 pts"), std::string::npos) << text;

  // A tolerance of exactly one image's worth passes; just under it does not.
  CheckOptions o;
  o.top1_tol = 0.01;
  EXPECT_TRUE(check_results(cur, base, o).passed());
  o.top1_tol = 0.0099;
  EXPECT_FALSE(check_results(cur, base, o).passed());
}

TEST_F(Check, NoiseIsComparedRelativeToTheLargerValue) {
  const auto base = noise_grid("base", "2");
  // |2.0000019 - 2| / 2.0000019 = 9.49999e-7 <= 1e-6; 2.0000021: 1.04999e-6 > 1e-6.
  EXPECT_TRUE(check_results(noise_grid("in", "2.0000019"), base, {}).passed());
  const CheckResult r = check_results(noise_grid("out", "2.0000021"), base, {});
  ASSERT_EQ(r.moved.size(), 1u);
  EXPECT_EQ(r.moved[0].quantity, "noise");
  EXPECT_DOUBLE_EQ(r.moved[0].baseline, 2.0);
  EXPECT_DOUBLE_EQ(r.moved[0].current, 2.0000021);
  EXPECT_NEAR(r.max_noise_move, 0.0000021 / 2.0000021, 1e-15);
  CheckOptions loose;
  loose.noise_rtol = 0.5;  // 2 -> 4 is a relative move of exactly 0.5
  EXPECT_TRUE(check_results(noise_grid("double", "4"), base, loose).passed());
  loose.noise_rtol = 0.4999;
  EXPECT_FALSE(check_results(noise_grid("double2", "4"), base, loose).passed());
}

TEST_F(Check, NanAndInfinityEqualOnlyThemselves) {
  CheckOptions loose;
  loose.noise_rtol = 1.0;  // any two finite values pass
  EXPECT_TRUE(check_results(noise_grid("n1", "nan"), noise_grid("n2", "nan"), {}).passed());
  EXPECT_TRUE(check_results(noise_grid("i1", "inf"), noise_grid("i2", "inf"), {}).passed());
  EXPECT_FALSE(check_results(noise_grid("n3", "nan"), noise_grid("f1", "1.5"), loose).passed());
  EXPECT_FALSE(check_results(noise_grid("i3", "inf"), noise_grid("f2", "1.5"), loose).passed());
  EXPECT_FALSE(check_results(noise_grid("i4", "-inf"), noise_grid("i5", "inf"), loose).passed());
  EXPECT_TRUE(check_results(noise_grid("f3", "1e-30"), noise_grid("f4", "3"), loose).passed());
}

TEST_F(Check, RowsOnOneSideOnlyAreReportedByName) {
  const auto base = grid("base", base_rows());
  const auto cur = grid("cur", base_rows(3, cell(1, "/layer1/conv1/Conv", 5, "0.4", 9250)));
  const CheckResult r = check_results(cur, base, {});
  ASSERT_EQ(r.moved.size(), 2u);
  EXPECT_EQ(r.moved[0].row, "/layer1/conv1/Conv, 4-bit weights, 8-bit activations");
  EXPECT_EQ(r.moved[0].detail, "in the baseline only");
  EXPECT_EQ(r.moved[1].row, "/layer1/conv1/Conv, 5-bit weights, 8-bit activations");
  EXPECT_EQ(r.moved[1].detail, "in the results only");
  EXPECT_EQ(r.moved_numbers(), 0u);
  EXPECT_EQ(r.compared, 1u + 3u * 2u);  // the 3 shared cells
}

TEST_F(Check, OtherImagesMakeOneLineNotOnePerRow) {
  const auto base = grid("base", base_rows());
  const auto cur = folder("cur", {{"layerwise.csv", std::string(kHeader) + cell(0, "/conv1/Conv", 3, "23.3", 170, 200) +
                                                        cell(0, "/conv1/Conv", 4, "8.5", 181, 200)},
                                  {"summary.json", "{\"float_correct\": 186, \"images\": 200}"}});
  const CheckResult r = check_results(cur, base, {});
  // The float32 top-1 (93.00% against 92.95%), one line for the images, the 2 missing cells.
  ASSERT_EQ(r.moved.size(), 4u);
  EXPECT_EQ(r.moved[0].row, "float32 network");
  EXPECT_DOUBLE_EQ(r.moved[0].current, 93.0);
  EXPECT_EQ(r.moved[1].row, "every row");
  EXPECT_EQ(r.moved[1].detail, "evaluated on 200 images, the baseline on 10000");
  EXPECT_EQ(r.compared, 1u);
}

TEST_F(Check, AdditivityConfigurationsMustHoldTheSameLayers) {
  const std::string h =
      "config_index,low_bits,high_bits,num_low_layers,low_layers,predicted_degradation,measured_degradation,"
      "predicted_noise,measured_noise,measured_top1,ci_low,ci_high\n";
  const auto base = folder("base", {{"additivity.csv", h + "0,4,8,1,6,0.24,0.20,0.51,0.48010447,92.7500,0,0\n"
                                                           "1,4,8,2,4 7,0.20,0.22,1.23,1.24769709,92.7300,0,0\n"}});
  const auto same = folder("same", {{"additivity.csv", h + "1,4,8,2,4 7,0.20,0.22,1.23,1.24769709,92.7300,0,0\n"
                                                           "0,4,8,1,6,0.24,0.20,0.51,0.48010447,92.7500,0,0\n"}});
  const auto other = folder("other", {{"additivity.csv", h + "0,4,8,1,6,0.24,0.20,0.51,0.48010447,92.7400,0,0\n"
                                                             "1,4,8,2,4 8,0.20,0.22,1.23,1.24769709,92.7300,0,0\n"}});
  const CheckResult ok = check_results(same, base, {});
  EXPECT_TRUE(ok.passed());
  EXPECT_EQ(ok.compared, 4u);  // no float32 top-1 without summary.json or layerwise.csv
  const CheckResult r = check_results(other, base, {});
  ASSERT_EQ(r.moved.size(), 2u);
  EXPECT_EQ(r.moved[0].row, "configuration 0");
  EXPECT_EQ(r.moved[0].quantity, "top-1");
  EXPECT_DOUBLE_EQ(r.moved[0].current, 92.74);
  EXPECT_EQ(r.moved[1].row, "configuration 1");
  EXPECT_EQ(r.moved[1].detail, "layers 4 8 at 4 bits, the rest at 8 (baseline: layers 4 7 at 4 bits, the rest at 8)");
}

TEST_F(Check, ComparisonVariantsAndTablesOnOneSide) {
  const std::string h = "variant,description,top1,degradation,noise,ci_low,ci_high\n";
  const auto base =
      folder("base", {{"comparison.csv", h + "minmax,base,84.9900,7.96,41.9315451,0,0\n"
                                             "sawb,\"SAWB, every layer\",88.6000,4.35,23.3428178,0,0\n"}});
  const auto cur = folder("cur", {{"comparison.csv", h + "minmax,base,84.9900,7.96,41.9315451,0,0\n"
                                                         "sawb,\"SAWB, every layer\",88.6000,4.35,23.3429178,0,0\n"},
                                  {"layerwise.csv", std::string(kHeader) + cell(0, "/conv1/Conv", 3, "1", 8612)}});
  const CheckResult r = check_results(cur, base, {});
  ASSERT_EQ(r.moved.size(), 3u);
  EXPECT_EQ(r.moved[0].table, "summary.json");  // a float32 top-1 on one side only
  EXPECT_TRUE(std::isnan(r.moved[0].baseline));
  EXPECT_EQ(r.moved[1].table, "layerwise.csv");
  EXPECT_EQ(r.moved[1].detail, "in the results only");
  EXPECT_EQ(r.moved[2].row, "variant sawb");
  EXPECT_EQ(r.moved[2].quantity, "noise");
}

// comparison.csv and additivity.csv have no images column: their rows count as evaluated on
// summary.json's images, so another data.eval.count is a move there too (audit: a comparison
// on 9,990 images passed against one on 10,000 at the cross-backend tolerances).
TEST_F(Check, ComparisonAndAdditivityRowsOfOtherImagesAreMoves) {
  const std::string ch = "variant,description,top1,degradation,noise,ci_low,ci_high\n";
  const std::string ah = "config_index,low_bits,high_bits,num_low_layers,low_layers,measured_noise,measured_top1\n";
  // Accuracies as whole counts of each folder's images: 8499 and 9275 of 10,000, 8490 and
  // 9266 of 9,990.
  auto run = [&](const std::string& name, int images, int float_correct) {
    const bool all = images == 10000;
    return folder(name, {{"comparison.csv", ch + "minmax,base," + (all ? "84.9900" : "84.9850") + ",7.96,41.9315451,0,0\n"},
                         {"additivity.csv", ah + "0,4,8,1,6,0.48010447," + (all ? "92.7500" : "92.7528") + "\n"},
                         {"summary.json", fmt::format("{{\"float_correct\": {}, \"images\": {}}}", float_correct,
                                                      images)}});
  };
  const auto base = run("base", 10000, 9295);
  EXPECT_TRUE(check_results(run("same", 10000, 9295), base, {}).passed());
  const CheckResult r = check_results(run("fewer", 9990, 9286), base, {.top1_tol = 0.05, .noise_rtol = 0.01});
  ASSERT_EQ(r.moved.size(), 2u) << "the float32 top-1 (92.95 / 92.95%) is within 0.05 points";
  for (const CheckRow& m : r.moved) {
    EXPECT_EQ(m.row, "every row");
    EXPECT_EQ(m.detail, "evaluated on 9990 images, the baseline on 10000");
  }
  EXPECT_EQ(r.moved[0].table, "additivity.csv");
  EXPECT_EQ(r.moved[1].table, "comparison.csv");
}

TEST_F(Check, ContextListsInputsAndConfigKeysThatDiffer) {
  const std::string rows = base_rows();
  const auto a = folder("a", {{"layerwise.csv", kHeader + rows},
                              {"manifest.json", R"({"git_commit": "1111111111111111", "model": {"sha256": "aa"},
                                                   "backend": {"name": "cpu", "device": "x", "fused_conv_variant": 13}})"},
                              {"config.toml",
                               "[model]\npath = \"/a/m.onnx\"\n[quant]\nweight_bits = [3, 4]\n"
                               "[output]\nroot = \"r1\"\n"}});
  const auto b = folder("b", {{"layerwise.csv", kHeader + rows},
                              {"manifest.json", R"({"git_commit": "2222222222222222", "model": {"sha256": "bb"},
                                                   "backend": {"name": "cpu", "device": "x", "fused_conv_variant": 10}})"},
                              {"config.toml",
                               "[model]\npath = \"/b/m.onnx\"\n[quant]\nweight_bits = [3, 4]\n"
                               "weight_clip = \"sawb\"\n"
                               "[output]\nroot = \"r2\"\n"}});
  const CheckResult r = check_results(a, b, {});
  EXPECT_TRUE(r.passed());  // context is not a move
  ASSERT_EQ(r.context.size(), 4u);
  EXPECT_EQ(r.context[0], "model sha256: aa (baseline: bb)");
  EXPECT_EQ(r.context[1], "fused conv variant: 13 (baseline: 10)");  // CUDA's kernel choice: its sums' order
  EXPECT_EQ(r.context[2], "git commit: 1111111111111111 (baseline: 2222222222222222)");
  // output.root left out, and model.path, as the manifests give the model's sha256.
  EXPECT_EQ(r.context[3], "config quant.weight_clip = (absent) (baseline: \"sawb\")");
  EXPECT_EQ(r.current_about.rfind("git 111111111111, backend cpu (x)", 0), 0u) << r.current_about;
}

TEST_F(Check, BadFoldersAreOneSentenceErrors) {
  const auto good = grid("good", base_rows());
  auto message = [&](const fs::path& cur, const fs::path& base, const CheckOptions& o = {}) -> std::string {
    try {
      check_results(cur, base, o);
    } catch (const UserError& e) {
      return e.what();
    }
    return "no error";
  };
  EXPECT_EQ(message(good, dir_ / "nope"), "baseline folder '" + (dir_ / "nope").string() + "' does not exist");
  const auto empty = folder("empty", {{"notes.txt", "x"}});
  EXPECT_EQ(message(empty, good),
            "results folder '" + empty.string() +
                "' has no layerwise.csv, additivity.csv or comparison.csv: not a qsweep results folder");
  const auto twice = grid("twice", cell(0, "/conv1/Conv", 3, "1", 8612) + cell(0, "/conv1/Conv", 3, "1", 8612));
  EXPECT_EQ(message(twice, good), (twice / "layerwise.csv").string() +
                                      ": the row '/conv1/Conv, 3-bit weights, 8-bit activations' appears twice");
  const auto no_noise = folder("no_noise", {{"layerwise.csv", "layer_name,weight_bits,act_bits,top1\nc,3,8,80\n"}});
  EXPECT_EQ(message(no_noise, good), (no_noise / "layerwise.csv").string() + ": no column 'noise'");
  const auto bad_json = folder("bad_json", {{"layerwise.csv", kHeader + base_rows()}, {"summary.json", "{"}});
  EXPECT_EQ(message(bad_json, good).rfind((bad_json / "summary.json").string() + ": not valid JSON", 0), 0u);
  // More correct images than images: a damaged table (exit 2), not a move of +2413 points.
  const auto over = grid("over", cell(0, "/conv1/Conv", 3, "1", 12413));
  EXPECT_EQ(message(over, good), (over / "layerwise.csv").string() +
                                     ", line 2: column 'correct' holds 12413, more than the row's 10000 images");
  const auto over_summary = folder("over_summary", {{"layerwise.csv", kHeader + base_rows()},
                                                    {"summary.json", R"({"images": 10, "float_correct": 11})"}});
  EXPECT_EQ(message(over_summary, good),
            (over_summary / "summary.json").string() + ": field 'float_correct' holds 11, more than its 10 images");
  CheckOptions negative;
  negative.noise_rtol = -1;
  EXPECT_EQ(message(good, good, negative).rfind("check tolerances must be 0 or more", 0), 0u);
  // Damaged tables are named by file and line, not compared: a stray comma, a cut row, a word
  // where a count belongs; a summary.json that is no object.
  std::string stray = base_rows(1, "");
  stray.insert(stray.find('\n'), ",");
  const auto comma = grid("comma", stray);
  EXPECT_EQ(message(comma, good), (comma / "layerwise.csv").string() + ", line 2: 15 fields where the header has 14");
  const std::string row = cell(0, "/conv1/Conv", 3, "23.2559466", 8612);
  const auto cut = grid("cut", base_rows(1, row.substr(0, row.rfind(',')) + "\n"));
  EXPECT_EQ(message(cut, good), (cut / "layerwise.csv").string() + ", line 3: 13 fields where the header has 14");
  std::string word = cell(0, "/conv1/Conv", 3, "23.2559466", 8612);
  word.replace(word.find(",8612,"), 6, ",abc,");
  const auto abc = grid("abc", base_rows(0, word));
  const std::string not_count = "not a whole number of 0 or more";
  EXPECT_EQ(message(abc, good), (abc / "layerwise.csv").string() + ", line 2: column 'correct' holds 'abc', " + not_count);
  // nan, inf or a fraction where a count belongs would compare as "not comparable" or pass.
  for (const char* v : {"nan", "inf", "86.5", "-1"}) {
    std::string bad = cell(0, "/conv1/Conv", 3, "23.2559466", 8612);
    bad.replace(bad.find(",8612,"), 6, fmt::format(",{},", v));
    const auto f = grid(std::string("count_") + v, base_rows(0, bad));
    EXPECT_EQ(message(f, good),
              (f / "layerwise.csv").string() + fmt::format(", line 2: column 'correct' holds '{}', ", v) + not_count);
  }
  word = cell(0, "/conv1/Conv", 3, "23.2559466", 8612);
  word.replace(word.find(",10000,"), 7, ",nan,");
  const auto nan_images = grid("nan_images", base_rows(0, word));
  EXPECT_EQ(message(nan_images, good),
            (nan_images / "layerwise.csv").string() + ", line 2: column 'images' holds 'nan', " + not_count);
  // summary.json's counts: present, and counts.
  const auto no_images = folder("no_images", {{"layerwise.csv", kHeader + base_rows()}, {"summary.json", "{\"float_correct\": 9295}"}});
  EXPECT_EQ(message(no_images, good), (no_images / "summary.json").string() + ": no field 'images'; not a qsweep summary.json");
  const auto text_count = grid("text_count", base_rows(), ", \"float_correct5\": \"9990\"");
  EXPECT_EQ(message(text_count, good),
            (text_count / "summary.json").string() + ": field 'float_correct5' holds \"9990\", not a count of images (a "
                                                     "whole number of 0 or more)");
  // An accuracy comes from counts: nan there is damage, not a moved number (audit).
  const auto cmp_good = folder("cmp_good", {{"comparison.csv", "variant,top1,noise\nminmax,87.3300,0.5\n"},
                                            {"summary.json", "{\"float_correct\": 9295, \"images\": 10000}"}});
  const auto cmp_nan = folder("cmp_nan", {{"comparison.csv", "variant,top1,noise\nminmax,nan,0.5\n"},
                                          {"summary.json", "{\"float_correct\": 9295, \"images\": 10000}"}});
  EXPECT_EQ(message(cmp_nan, cmp_good), (cmp_nan / "comparison.csv").string() +
                                            ", line 2: column 'top1' holds 'nan', not a finite number (accuracies come "
                                            "from counts of images)");
  EXPECT_EQ(message(cmp_good, cmp_good), "no error");
  // 89.21% of 500 images would be 446.05 of them: an edited table, not a moved number (audit:
  // reported as a move, exit 3).
  const auto cmp_edit = folder("cmp_edit", {{"comparison.csv", "variant,top1,noise\nminmax,89.2100,0.5\n"},
                                            {"summary.json", "{\"float_correct\": 460, \"images\": 500}"}});
  EXPECT_EQ(message(cmp_edit, cmp_good), (cmp_edit / "comparison.csv").string() +
                                             ", line 2: column 'top1' holds 89.2100, which is no whole number of the "
                                             "500 images summary.json gives; the table was edited or damaged");
  // config.toml is context, but a damaged one is a damaged folder (report refuses it too).
  const auto bad_toml = folder("bad_toml", {{"layerwise.csv", kHeader + base_rows()},
                                            {"summary.json", "{\"float_correct\": 9295, \"images\": 10000}"},
                                            {"config.toml", "[x"}});
  EXPECT_EQ(message(bad_toml, good).rfind((bad_toml / "config.toml").string() + ":1:3: not valid TOML", 0), 0u)
      << message(bad_toml, good);
  const auto null_top1 = grid("null_top1", base_rows(), ", \"float_top1\": null");
  EXPECT_EQ(message(null_top1, good), (null_top1 / "summary.json").string() + ": field 'float_top1' holds null, not a number");
  const auto list = folder("list", {{"layerwise.csv", kHeader + base_rows()}, {"summary.json", "[]"}});
  EXPECT_EQ(message(list, good), (list / "summary.json").string() + ": not a qsweep summary.json (a JSON object)");
}

// Top-5: compared (from the correct5 counts) where both folders have it, with its own
// tolerance; a folder written before qsweep reported top-5 gives one line of context.
TEST_F(Check, TopFiveIsComparedWhereBothFoldersHaveIt) {
  const std::string header5 = std::string(kHeader).substr(0, std::string(kHeader).size() - 1) +
                              ",top5,top5_degradation,correct5,float_top5\n";
  // top5 is written with a rounding the counts do not have: the counts must decide.
  auto with5 = [&](const std::string& row, int correct5) {
    return row.substr(0, row.size() - 1) + fmt::format(",{:.4f},0,{},99.9000\n", correct5 / 100.0, correct5);
  };
  const std::string summary5 = "{\"float_correct\": 9295, \"float_correct5\": 9990, \"images\": 10000}";
  auto grid5 = [&](const std::string& name, int correct5_of_first) {
    return folder(name, {{"layerwise.csv", header5 + with5(cell(0, "/conv1/Conv", 3, "23.2559466", 8612),
                                                           correct5_of_first) +
                                               with5(cell(0, "/conv1/Conv", 4, "8.58095362", 9050), 9980)},
                         {"summary.json", summary5}});
  };
  const auto base = grid5("base5", 9900);
  const CheckResult same = check_results(grid5("same5", 9900), base, {});
  EXPECT_TRUE(same.passed());
  EXPECT_EQ(same.compared, 2u + 2u * 3u);  // float32 top-1 and top-5, then 3 numbers per cell
  EXPECT_TRUE(same.context.empty());

  const CheckResult moved = check_results(grid5("moved5", 9899), base, {});
  ASSERT_EQ(moved.moved.size(), 1u);
  EXPECT_EQ(moved.moved[0].quantity, "top-5");
  EXPECT_DOUBLE_EQ(moved.moved[0].baseline, 99.0);
  EXPECT_DOUBLE_EQ(moved.moved[0].current, 98.99);
  EXPECT_NEAR(moved.max_top5_move, 0.01, 1e-12);
  EXPECT_EQ(moved.max_top1_move, 0.0);
  EXPECT_NE(format_check(moved, {}).find("-0.01 pts"), std::string::npos) << format_check(moved, {});
  CheckOptions loose;
  loose.top5_tol = 0.01;
  EXPECT_TRUE(check_results(grid5("moved5b", 9899), base, loose).passed());
  loose.top1_tol = 1.0;  // top-1's tolerance does not cover top-5
  loose.top5_tol = 0.0;
  EXPECT_FALSE(check_results(grid5("moved5c", 9899), base, loose).passed());

  // A baseline without top-5: not compared, and said so.
  const auto old =
      grid("old", cell(0, "/conv1/Conv", 3, "23.2559466", 8612) + cell(0, "/conv1/Conv", 4, "8.58095362", 9050));
  const CheckResult against_old = check_results(grid5("new5", 9000), old, {});
  EXPECT_TRUE(against_old.passed()) << format_check(against_old, {});
  EXPECT_EQ(against_old.compared, 1u + 2u * 2u);
  ASSERT_EQ(against_old.context.size(), 2u);
  EXPECT_EQ(against_old.context[0],
            "the float32 network's top-5 is not compared: only the results' summary.json has it (earlier qsweep "
            "versions did not write it)");
  EXPECT_EQ(against_old.context[1],
            "top-5 is not compared in layerwise.csv: only the results has it (earlier qsweep versions did not write "
            "it)");
}

// summary.json holds the float32 network's top-1 and top-5: on one side only it counts as
// moved, like a table, rather than leaving the float32 top-5 unchecked.
TEST_F(Check, ASummaryOnOneSideOnlyCountsAsMoved) {
  const auto base = grid("base", base_rows());
  const auto cur = folder("cur", {{"layerwise.csv", std::string(kHeader) + base_rows()}});
  for (const bool swapped : {false, true}) {
    const CheckResult r = swapped ? check_results(base, cur, {}) : check_results(cur, base, {});
    EXPECT_FALSE(r.passed());
    ASSERT_EQ(r.moved.size(), 1u);
    EXPECT_EQ(r.moved[0].table, "summary.json");
    EXPECT_EQ(r.moved[0].detail, swapped ? "in the results only" : "in the baseline only");
    EXPECT_EQ(r.compared, 4u * 2u);  // every cell is still compared
  }
}

// A row evaluated on another number of images is named; the other rows are still compared.
// Only when every row differs (another data.eval.count) does one line stand for all.
TEST_F(Check, ARowOfOtherImagesIsNamedAndTheRestCompared) {
  const auto base = grid("base", base_rows());
  const auto one = grid("one", base_rows(2, cell(1, "/layer1/conv1/Conv", 3, "20.08", 8714, 9999)) );
  const CheckResult r = check_results(one, base, {});
  ASSERT_EQ(r.moved.size(), 1u);
  EXPECT_EQ(r.moved[0].row, "/layer1/conv1/Conv, 3-bit weights, 8-bit activations");
  EXPECT_EQ(r.moved[0].detail, "evaluated on 9999 images, the baseline on 10000");
  EXPECT_EQ(r.compared, 1u + 3u * 2u);
  std::string all;
  for (const auto& [i, name, bits, noise, correct] :
       {std::tuple{0, "/conv1/Conv", 3, "23.2559466", 8612}, std::tuple{0, "/conv1/Conv", 4, "8.58095362", 9050},
        std::tuple{1, "/layer1/conv1/Conv", 3, "20.08", 8715}, std::tuple{1, "/layer1/conv1/Conv", 4, "1.5", 9201}}) {
    all += cell(i, name, bits, noise, correct / 2, 5000);  // counts within the 5000 images
  }
  const CheckResult every = check_results(grid("every", all), base, {});
  ASSERT_EQ(every.moved.size(), 1u);
  EXPECT_EQ(every.moved[0].row, "every row");
  EXPECT_EQ(every.moved[0].detail, "evaluated on 5000 images, the baseline on 10000");
}

TEST_F(Check, JsonListsEveryMovedRow) {
  const auto base = grid("base", base_rows());
  const auto cur =
      grid("cur", cell(0, "/conv1/Conv", 3, "24", 8600) + cell(0, "/conv1/Conv", 4, "9", 9000) +
                      cell(1, "/layer1/conv1/Conv", 3, "20.08", 8715) + cell(1, "/layer1/conv1/Conv", 4, "1.5", 9201));
  CheckOptions o;
  o.show = 1;
  const CheckResult r = check_results(cur, base, o);
  ASSERT_EQ(r.moved.size(), 4u);
  const std::string text = format_check(r, o);
  EXPECT_NE(text.find("... and 3 more"), std::string::npos) << text;
  const auto j = check_json(r, o);
  EXPECT_EQ(j["passed"], false);
  EXPECT_EQ(j["compared"], 9);
  ASSERT_EQ(j["moved"].size(), 4u);
  EXPECT_EQ(j["moved"][1]["quantity"], "noise");
  EXPECT_DOUBLE_EQ(j["moved"][1]["baseline"].get<double>(), 23.2559466);
  EXPECT_DOUBLE_EQ(j["moved"][1]["results"].get<double>(), 24.0);
  EXPECT_DOUBLE_EQ(j["tolerances"]["noise_relative"].get<double>(), 1e-6);
}

TEST_F(Check, JunitHasOneCasePerRowAndFailsTheMovedOnes) {
  const auto base = grid("base", base_rows() + cell(2, "a&b<c>", 3, "1", 5000));
  const auto cur =
      grid("cur", base_rows(0, cell(0, "/conv1/Conv", 3, "23.2559466", 8613)) + cell(2, "a&b<c>", 3, "2", 5000));
  const CheckResult r = check_results(cur, base, {});
  const std::string x = check_junit(r, {});
  EXPECT_EQ(x.rfind("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"qsweep check\" tests=\"6\" "
                    "failures=\"2\">",
                    0),
            0u)
      << x;
  // The float32 network and 5 cells, each once; the two moved ones fail with what moved.
  EXPECT_NE(x.find("<testcase classname=\"summary.json\" name=\"float32 network\"/>"), std::string::npos) << x;
  EXPECT_NE(x.find("<testcase classname=\"layerwise.csv\" name=\"/conv1/Conv, 3-bit weights, 8-bit activations\">\n"
                   "      <failure message=\"top-1: 86.12% -&gt; 86.13% (+0.01 pts)\">"),
            std::string::npos)
      << x;
  EXPECT_NE(
      x.find("name=\"a&amp;b&lt;c&gt;, 3-bit weights, 8-bit activations\">\n      <failure message=\"noise: 1 -&gt; "
             "2 (+50%)\">"),
      std::string::npos)
      << x;
  EXPECT_NE(
      x.find("<testcase classname=\"layerwise.csv\" name=\"/layer1/conv1/Conv, 4-bit weights, 8-bit activations\"/>"),
      std::string::npos)
      << x;
  const std::string end = "    </testcase>\n  </testsuite>\n</testsuites>\n";  // the last cell failed
  EXPECT_EQ(x.substr(x.size() - end.size()), end);
}

// ---------------------------------------------------------------- through the binary

using testing::CliRun;
using testing::slurp;

class CheckCli : public Check {
 protected:
  std::string small_run(const std::string& id, const std::string& extra) {
    return "run " + std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --quiet --out " +
           (dir_ / "res").string() + " --run-id " + id +
           " --set data.eval.count=300 --set data.calibration.count=64 --set 'quant.weight_bits=[3,8]' " + extra;
  }
};

TEST_F(CheckCli, ExitCodesOfCheck) {
  const auto base = grid("base", base_rows());
  const auto moved = grid("moved", base_rows(0, cell(0, "/conv1/Conv", 3, "23.2559466", 8611)));
  CliRun r = run("check " + grid("same", base_rows()).string() + " " + base.string());
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("OK: all 9 numbers within tolerance"), std::string::npos) << r.out;
  r = run("check -q " + grid("same2", base_rows()).string() + " " + base.string());
  EXPECT_EQ(r.code, 0);
  EXPECT_EQ(r.out, "");
  r = run("check " + moved.string() + " " + base.string() + " --json " + (dir_ / "check.json").string() + " --junit " +
          (dir_ / "check.xml").string());
  EXPECT_EQ(r.code, kCheckMovedExit);
  EXPECT_NE(r.out.find("-0.01 pts"), std::string::npos) << r.out;
  EXPECT_EQ(r.err, "qsweep: check failed against " + base.string() +
                       ": MOVED: 1 of 9 numbers beyond tolerance (top-1 0 points, top-5 0 points, noise 1e-06 "
                       "relative)\n");
  EXPECT_EQ(nlohmann::json::parse(slurp(dir_ / "check.json"))["moved"].size(), 1u);
  EXPECT_NE(slurp(dir_ / "check.xml").find("tests=\"5\" failures=\"1\""), std::string::npos)
      << slurp(dir_ / "check.xml");
  r = run("check " + moved.string() + " " + base.string() + " --top1-tol 0.01");
  EXPECT_EQ(r.code, 0) << r.out;
  r = run("check " + moved.string() + " " + (dir_ / "nope").string());
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(std::count(r.err.begin(), r.err.end(), '\n'), 1) << r.err;
}

// --json/--junit write through a symbolic link (the link stays, its file gets the report) and
// into a FIFO (a dashboard's pipe stays a pipe); a folder is refused before the comparison.
TEST_F(CheckCli, ReportsWriteThroughLinksAndPipes) {
  const auto base = grid("base", base_rows());
  std::ofstream(dir_ / "target.json") << "old";
  fs::create_symlink("target.json", dir_ / "link.json");
  CliRun r = run("check " + base.string() + " " + base.string() + " --json " + (dir_ / "link.json").string());
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_symlink(dir_ / "link.json"));
  EXPECT_EQ(nlohmann::json::parse(slurp(dir_ / "target.json"))["passed"], true);
  fs::create_symlink("made.json", dir_ / "dangling.json");  // its file does not exist yet
  r = run("check " + base.string() + " " + base.string() + " --json " + (dir_ / "dangling.json").string());
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_symlink(dir_ / "dangling.json"));
  EXPECT_EQ(nlohmann::json::parse(slurp(dir_ / "made.json"))["passed"], true);

  ASSERT_EQ(mkfifo((dir_ / "pipe").c_str(), 0600), 0);
  std::string got;
  std::thread reader([&] { got = slurp(dir_ / "pipe"); });
  r = run("check " + base.string() + " " + base.string() + " --junit " + (dir_ / "pipe").string());
  reader.join();
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_TRUE(fs::is_fifo(dir_ / "pipe"));
  EXPECT_EQ(got.rfind("<?xml", 0), 0u) << got;

  // /dev/stdout while stdout goes to a file: the report and then the text, neither lost.
  r = run("check " + base.string() + " " + base.string() + " --json /dev/stdout");
  EXPECT_EQ(r.code, 0) << r.err;
  ASSERT_EQ(r.out.rfind("{", 0), 0u) << r.out;
  const size_t text = r.out.find("qsweep check: ");
  ASSERT_NE(text, std::string::npos) << r.out;
  EXPECT_EQ(nlohmann::json::parse(r.out.substr(0, text))["passed"], true);
  EXPECT_NE(r.out.find("OK: all 9 numbers within tolerance"), std::string::npos) << r.out;

  r = run("check " + base.string() + " " + base.string() + " --json " + dir_.string());
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "qsweep: error: --json " + dir_.string() + ": is a folder; give a file name\n");
  const std::string temp = "." + dir_.filename().string() + ".tmp";  // write_file_atomic's name
  for (const auto& e : fs::directory_iterator(dir_.parent_path())) {
    EXPECT_NE(e.path().filename().string().rfind(temp, 0), 0u) << e.path() << " was left behind";
  }
}

TEST_F(CheckCli, RunWithCheckFailsLoudlyWhenANumberMoves) {
  if (!fs::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  CliRun r = run(small_run("base", ""));
  ASSERT_EQ(r.code, 0) << r.err;
  const fs::path base = dir_ / "res" / "quickstart" / "base";
  // The same experiment again, computed anew: every number equal.
  r = run(small_run("again", "--check " + base.string()));
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  EXPECT_EQ(r.out, "");  // --quiet, and nothing moved
  // SAWB clipping on the first layer moves its 3-bit cell.
  r = run(small_run("sawb", "--set 'quant.layer=[{layers=[0], weight_clip=\"sawb\"}]' --check " + base.string()));
  EXPECT_EQ(r.code, kCheckMovedExit) << r.err;
  EXPECT_NE(r.out.find("layerwise.csv  /conv1/Conv, 3-bit weights, 8-bit activations"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("config quant.layer = "), std::string::npos) << r.out;
  EXPECT_NE(r.err.find("qsweep: check failed against"), std::string::npos) << r.err;
  EXPECT_TRUE(fs::exists(dir_ / "res" / "quickstart" / "sawb" / "layerwise.csv")) << "the results are kept";
  // A baseline that does not exist is refused before the run, a shard cannot be checked.
  r = run(small_run("never", "--check " + (dir_ / "nope").string()));
  EXPECT_EQ(r.code, 2);
  EXPECT_FALSE(fs::exists(dir_ / "res" / "quickstart" / "never"));
  r = run(small_run("nojson", "--check " + base.string() + " --junit " + (dir_ / "no" / "x.xml").string()));
  EXPECT_EQ(r.code, 2);
  EXPECT_EQ(r.err, "qsweep: error: --junit " + (dir_ / "no" / "x.xml").string() + ": its folder does not exist\n");
  EXPECT_FALSE(fs::exists(dir_ / "res" / "quickstart" / "nojson")) << "refused before the run";
  r = run(small_run("shard", "--shard 1/2 --check " + base.string()));
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("--check compares a whole run"), std::string::npos) << r.err;
}

// The nightly job of README's "Regression checks" on the shipped baseline: the full default
// grid (10,000 images) against configs/baselines/quickstart, a snapshot of this run at the
// commit that added it. The tolerances are the CUDA-vs-CPU contract, so that a CPU without
// qsweep's AVX-512 kernels (oneDNN then sums in its own blocking) still passes; on the machine
// that made the baseline every number is equal.
TEST_F(CheckCli, DefaultRunMatchesTheShippedBaseline) {
  if (!fs::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
  const std::string baseline = std::string(QSWEEP_SOURCE_DIR) + "/configs/baselines/quickstart";
  const CliRun r = run("run " + std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --out " +
                       (dir_ / "res").string() + " --run-id nightly --check " + baseline +
                       " --top1-tol 0.05 --top5-tol 0.05 --noise-rtol 0.01 --json " + (dir_ / "check.json").string());
  EXPECT_EQ(r.code, 0) << r.out << r.err;
  const auto j = nlohmann::json::parse(slurp(dir_ / "check.json"));
  EXPECT_EQ(j["passed"], true);
  // The float32 top-1 and top-5, then top-1, noise and top-5 of 10 layers x 6 bit-widths.
  EXPECT_EQ(j["compared"], 2 + 60 * 3);
}

}  // namespace
}  // namespace qsweep
