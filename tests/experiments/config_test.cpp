#include "experiments/config.h"

#include <filesystem>
#include <fstream>
#include <regex>

#include <gtest/gtest.h>
#include <toml++/toml.h>

#include "runtime/error.h"

namespace qsweep {
namespace {

namespace fs = std::filesystem;

class ConfigFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("qsweep_cfg_" + std::to_string(::getpid()));
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string write(const std::string& name, const std::string& text) {
    const fs::path p = dir_ / name;
    std::ofstream(p) << text;
    return p.string();
  }
  // The UserError message load_config throws, or "" when it does not throw.
  std::string error_of(const std::string& path, const std::vector<std::string>& sets = {}) {
    try {
      load_config(path, sets);
    } catch (const UserError& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(ConfigFiles, DefaultsFollowMethodMd) {
  const Config c = load_config(write("a.toml", "[model]\npath = \"m.onnx\"\n"), {});
  EXPECT_EQ(c.quant.weight_bits, (std::vector<int>{3, 4, 5, 6, 7, 8}));
  EXPECT_EQ(c.quant.base.act_bits, 8);
  EXPECT_EQ(c.quant.base.scheme, Scheme::kAsymmetric);
  EXPECT_EQ(c.quant.base.granularity, Granularity::kPerTensor);
  EXPECT_EQ(c.calibration_count, 512);
  EXPECT_EQ(c.calibration_split, "train");
  EXPECT_EQ(c.eval_split, "test");
  EXPECT_EQ(c.eval_count, 0);
  EXPECT_EQ(c.kind, "layerwise");
}

TEST_F(ConfigFiles, RelativeModelPathIsResolvedAgainstTheConfigFolder) {
  const Config c = load_config(write("a.toml", "[model]\npath = \"sub/m.onnx\"\n"), {});
  EXPECT_EQ(c.model_path, (dir_ / "sub/m.onnx").string());
  // From --set, against the working directory.
  const Config d = load_config(write("b.toml", "[model]\npath = \"x.onnx\"\n"), {"model.path=\"y.onnx\""});
  EXPECT_EQ(d.model_path, (fs::current_path() / "y.onnx").string());
}

TEST_F(ConfigFiles, UnknownKeyCitesFileLineColumnAndKnownKeys) {
  const std::string p = write("a.toml", "[model]\npath = \"m.onnx\"\n\n[quant]\nweight_bit = [4]\n");
  const std::string e = error_of(p);
  EXPECT_NE(e.find(p + ":5:1: unknown key 'quant.weight_bit'"), std::string::npos) << e;
  EXPECT_NE(e.find("quant.weight_bits"), std::string::npos) << e;  // the key they meant is listed
}

// A quoted key with a dot (as a flat dict written by Python's toml.dump gives) is one key
// whose name holds a dot: refused, rather than passing the key check and never being read.
TEST_F(ConfigFiles, QuotedKeyWithADotIsRefused) {
  const std::string p = write("a.toml", "\"quant.act_bits\" = 6\n[model]\npath = \"m.onnx\"\n");
  const std::string e = error_of(p);
  EXPECT_NE(e.find(p + ":1:1: the quoted key \"quant.act_bits\" holds a dot; write it unquoted (quant.act_bits = ...) "
                       "or under its table ([quant])"),
            std::string::npos)
      << e;
  const std::string q = write("b.toml", "[model]\npath = \"m.onnx\"\n[data]\n\"calibration.count\" = 0\n");
  EXPECT_NE(error_of(q).find("[data.calibration]"), std::string::npos) << error_of(q);
  // Unquoted dotted keys are tables, as TOML says.
  EXPECT_EQ(load_config(write("c.toml", "quant.act_bits = 6\n[model]\npath = \"m.onnx\"\n"), {}).quant.base.act_bits, 6);
}

TEST_F(ConfigFiles, UnknownSectionIsAnError) {
  const std::string p = write("a.toml", "[model]\npath = \"m.onnx\"\n[qunat]\nact_bits = 4\n");
  const std::string e = error_of(p);
  EXPECT_NE(e.find("unknown section [qunat]"), std::string::npos) << e;
  EXPECT_NE(e.find(p + ":"), std::string::npos) << e;
}

TEST_F(ConfigFiles, WrongTypeCitesPositionAndExpectedType) {
  const std::string p = write("a.toml", "[model]\npath = \"m.onnx\"\n[quant]\nact_bits = \"8\"\n");
  const std::string e = error_of(p);
  EXPECT_NE(e.find(p + ":4:12: 'quant.act_bits' must be an integer, not a string"), std::string::npos) << e;
  const std::string q = write("b.toml", "[model]\npath = \"m.onnx\"\n[quant]\nweight_bits = [4, \"x\"]\n");
  EXPECT_NE(error_of(q).find("'quant.weight_bits' must be an array of integers"), std::string::npos) << error_of(q);
}

TEST_F(ConfigFiles, BadValuesAreNamed) {
  const std::string p = write("a.toml", "[model]\npath = \"m.onnx\"\n[quant]\nscheme = \"affine\"\n");
  const std::string e = error_of(p);
  EXPECT_NE(e.find(p + ":4:10: 'quant.scheme' is \"affine\"; accepted: \"asymmetric\", \"symmetric\""),
            std::string::npos)
      << e;
  EXPECT_NE(error_of(write("b.toml", "[model]\npath = \"m\"\n[quant]\nweight_bits = [1]\n")).find("2..16"),
            std::string::npos);
  EXPECT_NE(error_of(write("c.toml", "[model]\npath = \"m\"\n[data]\nmean = [0.1, 0.2]\n")).find("data.std"),
            std::string::npos);
  const std::string threads = write("d.toml", "[model]\npath = \"m\"\n[run]\nthreads = 100000\n");
  EXPECT_NE(error_of(threads).find(threads + ":4:11: 'run.threads' must be 0 (every core) or 1 to 1024"),
            std::string::npos)
      << error_of(threads);
  const std::string name = write("e.toml", "[model]\npath = \"m\"\n[experiment]\nname = \"" +
                                               std::string(300, 'x') + "\"\n");
  EXPECT_NE(error_of(name).find("'experiment.name' has 300 characters; at most 160"), std::string::npos)
      << error_of(name);
  // Found by fuzzing: values the field cannot hold are refused, not wrapped to 32 bits (2^32 + 2
  // threads ran as 2); means must be numbers; names may not hold control characters; grids
  // and resample counts are bounded.
  const std::string wrap = write("f.toml", "[model]\npath = \"m\"\n[run]\nthreads = 4294967298\n");
  EXPECT_NE(error_of(wrap).find(wrap + ":4:11: 'run.threads' is 4294967298; it must be between"), std::string::npos)
      << error_of(wrap);
  EXPECT_NE(error_of(write("g.toml", "[model]\npath = \"m\"\n[data]\nmean = [nan]\n")).find("'data.mean' values must be finite"),
            std::string::npos);
  EXPECT_NE(error_of(write("h.toml", "[model]\npath = \"m\"\n[data]\nstd = [inf]\n")).find("'data.std' values must be positive finite"),
            std::string::npos);
  EXPECT_NE(error_of(write("i.toml", "[model]\npath = \"m\"\n[experiment]\nname = \"a\\nb\"\n")).find("control characters"),
            std::string::npos);
  EXPECT_NE(error_of(write("j.toml", "[model]\npath = \"m\"\n[quant]\nmse_grid = 100000000\n")).find("2 to 10000"),
            std::string::npos);
  EXPECT_NE(error_of(write("k.toml", "[model]\npath = \"m\"\n[additivity]\nconfigs = 1000000000\n")).find("1 to 100000"),
            std::string::npos);
}

// [[quant.layer]] weight_bits has no meaning in an additivity run: refused at load, naming the
// override (audit: it was ignored in silence although the key's text said it applied).
TEST_F(ConfigFiles, AdditivityRefusesPerLayerBitWidths) {
  const std::string over = write("s4.toml", "[model]\npath = \"m\"\n[experiment]\nkind = \"additivity\"\n"
                                            "[[quant.layer]]\nlayers = [0, 1]\nweight_bits = 2\n");
  EXPECT_NE(error_of(over).find(over + ":5:1: weight_bits does not apply to kind = \"additivity\""), std::string::npos)
      << error_of(over);
  // Other override fields do apply to additivity runs, and weight_bits to comparisons.
  EXPECT_EQ(error_of(over, {"quant.layer=[{layers = [0], weight_clip = \"sawb\"}]"}), "");
  EXPECT_EQ(error_of(over, {"experiment.kind=\"full\"", "quant.weight_bits=[4]"}), "");
}

// Additivity's bit-widths: low_bits must be below high_bits (equal ones made r and slope NaN),
// and output.bar_bits names one of them, not one of quant.weight_bits, which additivity does
// not use (audit: bar_bits = 4 was refused for a 4-bit low width, 3 accepted then replaced).
TEST_F(ConfigFiles, AdditivityBitWidthsAreChecked) {
  const std::string a = write("ad.toml", "[model]\npath = \"m\"\n[experiment]\nkind = \"additivity\"\n"
                                         "[additivity]\nlow_bits = 8\nhigh_bits = 8\n");
  EXPECT_NE(error_of(a).find(a + ":6:12: 'additivity.low_bits' gives low_bits = high_bits = 8: every configuration "
                                 "would be the same network; make them differ (or high_bits = 0: float32 outside the "
                                 "subset)"),
            std::string::npos)
      << error_of(a);
  EXPECT_EQ(error_of(a, {"additivity.high_bits=0"}), "");
  EXPECT_EQ(error_of(a, {"additivity.high_bits=4"}), "");  // a subset at more bits than the rest: well defined
  EXPECT_EQ(error_of(a, {"additivity.low_bits=4"}), "");
  EXPECT_EQ(error_of(a, {"additivity.low_bits=4", "output.bar_bits=4", "quant.weight_bits=[3]"}), "");
  EXPECT_EQ(error_of(a, {"additivity.low_bits=4", "output.bar_bits=8"}), "");
  EXPECT_NE(error_of(a, {"additivity.low_bits=4", "output.bar_bits=3"})
                .find("'output.bar_bits' is 3; for kind = \"additivity\" it must be 0 (the lowest), additivity.low_bits "
                      "(4) or additivity.high_bits (8)"),
            std::string::npos)
      << error_of(a, {"additivity.low_bits=4", "output.bar_bits=3"});
  // Other kinds: still one of quant.weight_bits.
  EXPECT_NE(error_of(a, {"experiment.kind=\"layerwise\"", "quant.weight_bits=[3]", "output.bar_bits=4"})
                .find("one of quant.weight_bits"),
            std::string::npos);
}

// An error inside a table or array given by --set names that --set, not a line of the file
// (audit: the --set text's own line and column were given as the file's).
TEST_F(ConfigFiles, ErrorsInsideASetValueNameTheSet) {
  const std::string p = write("s.toml", "[model]\npath = \"m.onnx\"\n");
  EXPECT_EQ(error_of(p, {"quant.layer=[{layers=[0],weight_clip=\"bogus\"}]"}),
            "--set quant.layer: 'quant.layer.weight_clip' is \"bogus\"; accepted: \"minmax\", \"sawb\", \"mse\", "
            "\"percentile\"");
  EXPECT_EQ(error_of(p, {"run={threads=-4}"}).rfind("--set run: 'run.threads'", 0), 0u) << error_of(p, {"run={threads=-4}"});
}

// Spaces around '=' in a --set, as a TOML file allows them (audit: 'data.eval.count ' was an
// unknown key); the key is recorded as set from the command line either way.
TEST_F(ConfigFiles, SetAllowsSpacesAroundTheEqualsSign) {
  const std::string p = write("sp.toml", "[model]\npath = \"m.onnx\"\n");
  const Config c = load_config(p, {"data.eval.count = 500", " quant.act_bits\t=6"});
  EXPECT_EQ(c.eval_count, 500);
  EXPECT_EQ(c.quant.base.act_bits, 6);
  EXPECT_EQ(error_of(p, {" = 5"}).rfind("--set  = 5:", 0), 0u) << error_of(p, {" = 5"});
}

// Messages that named the wrong thing (audit): a key written as a section, an empty data.mean
// (blamed on data.std), a config path that is not a regular file (said not to exist).
TEST_F(ConfigFiles, MisplacedKeysAndEmptyValuesAreNamed) {
  const std::string p = write("k.toml", "[model]\npath = \"m.onnx\"\n[run.threads]\nx = 1\n");
  EXPECT_EQ(error_of(p), p + ":3:6: 'run.threads' is a key (integer), not a section: write threads = ... under [run]");
  const std::string q = write("m.toml", "[model]\npath = \"m.onnx\"\n");
  EXPECT_EQ(error_of(q, {"data.mean=[]", "data.std=[]"}),
            "--set data.mean: 'data.mean' must hold one value per image channel (it is empty)");
  EXPECT_EQ(error_of("/dev/null"), "config file '/dev/null' is not a regular file; give a TOML file");
  // A file's error is the file's even where --set names the same key.
  const std::string d = write("d.toml", "\"quant.act_bits\" = 6\n[model]\npath = \"m.onnx\"\n");
  EXPECT_EQ(error_of(d, {"quant.act_bits=4"}).rfind(d + ":1:1: the quoted key", 0), 0u) << error_of(d, {"quant.act_bits=4"});
}

// [quant.layer] (one bracket) is a table, which would be read as no override at all.
TEST_F(ConfigFiles, SingleBracketListTablesAreRefused) {
  const std::string p = write("a.toml", "[model]\npath = \"m.onnx\"\n[quant.layer]\nlayers = [0]\nact_bits = 2\n");
  EXPECT_EQ(error_of(p), p + ":3:8: 'quant.layer' is a list of tables: write [[quant.layer]] (double brackets), one "
                             "per entry");
  const std::string v = write("b.toml", "[experiment]\nkind = \"full\"\n[model]\npath = \"m.onnx\"\n[variant]\nname = "
                                        "\"x\"\n");
  EXPECT_NE(error_of(v).find("'variant' is a list of tables: write [[variant]]"), std::string::npos) << error_of(v);
  const std::string ok = write("c.toml", "[model]\npath = \"m.onnx\"\n[[quant.layer]]\nlayers = [0]\nact_bits = 6\n");
  EXPECT_EQ(load_config(ok, {}).quant.layers.size(), 1u);
}

TEST_F(ConfigFiles, MissingFileAndMissingModel) {
  EXPECT_EQ(error_of((dir_ / "nope.toml").string()), "config file '" + (dir_ / "nope.toml").string() + "' does not exist");
  const std::string p = write("a.toml", "[quant]\nact_bits = 8\n");
  EXPECT_NE(error_of(p).find("'model.path' is required"), std::string::npos) << error_of(p);
}

TEST_F(ConfigFiles, InvalidTomlCitesPosition) {
  const std::string p = write("a.toml", "[model]\npath = \"m.onnx\n");
  const std::string e = error_of(p);
  EXPECT_NE(e.find(p + ":2:"), std::string::npos) << e;
  EXPECT_NE(e.find("not valid TOML"), std::string::npos) << e;
}

TEST_F(ConfigFiles, SetOverridesAnyKeyWithTomlValues) {
  const std::string p = write("a.toml", "[model]\npath = \"m.onnx\"\n[quant]\nact_bits = 8\n");
  const Config c = load_config(p, {"quant.weight_bits=[4,8]", "quant.act_bits=6", "run.naive=true",
                                   "data.calibration.count=64", "experiment.name=\"sweep-1\""});
  EXPECT_EQ(c.quant.weight_bits, (std::vector<int>{4, 8}));
  EXPECT_EQ(c.quant.base.act_bits, 6);
  EXPECT_TRUE(c.naive);
  EXPECT_EQ(c.calibration_count, 64);
  EXPECT_EQ(c.name, "sweep-1");
}

TEST_F(ConfigFiles, SetErrorsNameTheOverride) {
  const std::string p = write("a.toml", "[model]\npath = \"m.onnx\"\n");
  EXPECT_NE(error_of(p, {"quant.bits=4"}).find("--set quant.bits: unknown key 'quant.bits'"), std::string::npos)
      << error_of(p, {"quant.bits=4"});
  EXPECT_NE(error_of(p, {"quant.act_bits=\"x\""}).find("--set quant.act_bits: 'quant.act_bits' must be an integer"),
            std::string::npos);
  EXPECT_NE(error_of(p, {"model.path=m.onnx"}).find("strings need quotes"), std::string::npos);
  EXPECT_NE(error_of(p, {"quant.act_bits"}).find("expected KEY=VALUE"), std::string::npos);
  // A section only the override creates is the override's fault, not the file's.
  EXPECT_EQ(error_of(p, {"a.b=1"}).rfind("--set a.b: unknown section [a]", 0), 0u) << error_of(p, {"a.b=1"});
}

TEST_F(ConfigFiles, ConfigAsRunRoundTrips) {
  const std::string p = write("a.toml", "[model]\npath = \"m.onnx\"\n");
  const Config c = load_config(p, {"quant.weight_bits=[5,3]", "quant.granularity=\"per-channel\""});
  const std::string again = write("again.toml", config_to_toml(c));
  const Config d = load_config(again, {});
  EXPECT_EQ(d.quant.weight_bits, c.quant.weight_bits);
  EXPECT_EQ(d.quant.base.granularity, Granularity::kPerChannel);
  EXPECT_EQ(d.model_path, c.model_path);
  EXPECT_EQ(d.mean, c.mean);
  EXPECT_EQ(d.data_path, c.data_path);
}

// data.*.order: validated, and written to config.toml only where it is not "file" (the seed
// only where an order is "shuffled"), so that earlier configs keep their run ids.
TEST_F(ConfigFiles, ImageOrdersAndTheirSeed) {
  const std::string p = write("a.toml", "[model]\npath = \"m.onnx\"\n[data.eval]\norder = \"random\"\n");
  EXPECT_NE(error_of(p).find(p + ":4:9: 'data.eval.order' is \"random\"; accepted: \"file\", \"interleaved\", "
                                 "\"shuffled\""),
            std::string::npos)
      << error_of(p);
  const std::string q = write("b.toml", "[model]\npath = \"m.onnx\"\n");
  const Config plain = load_config(q, {});
  EXPECT_EQ(plain.calibration_order, "file");
  EXPECT_EQ(plain.eval_order, "file");
  // config.toml holds every default, these too (a check against it then lists no key as absent).
  const toml::table as_run = toml::parse(config_to_toml(plain));
  EXPECT_EQ(as_run.at_path("data.calibration.order").value<std::string>(), "file");
  EXPECT_EQ(as_run.at_path("data.eval.order").value<std::string>(), "file");
  EXPECT_EQ(as_run.at_path("data.seed").value<int64_t>(), 0);
  EXPECT_EQ(as_run.at_path("data.resize").value<int64_t>(), 0);
  EXPECT_EQ(as_run.at_path("data.crop").value<int64_t>(), 0);

  const Config mixed = load_config(q, {"data.calibration.order=\"interleaved\""});
  const toml::table mixed_run = toml::parse(config_to_toml(mixed));
  EXPECT_EQ(mixed_run.at_path("data.calibration.order").value<std::string>(), "interleaved");
  EXPECT_EQ(mixed_run.at_path("data.eval.order").value<std::string>(), "file");

  const Config shuffled = load_config(q, {"data.eval.order=\"shuffled\"", "data.seed=17"});
  const Config again = load_config(write("again.toml", config_to_toml(shuffled)), {});
  EXPECT_EQ(again.eval_order, "shuffled");
  EXPECT_EQ(again.calibration_order, "file");
  EXPECT_EQ(again.data_seed, 17u);
}

TEST_F(ConfigFiles, BatchSizeAutoAndTf32) {
  const std::string p = write("a.toml", "[model]\npath = \"m.onnx\"\n[run]\nbatch_size = \"auto\"\ntf32 = true\n");
  const Config c = load_config(p, {});
  EXPECT_EQ(c.batch_size, 0);  // auto
  EXPECT_TRUE(c.tf32);
  const Config d = load_config(write("again.toml", config_to_toml(c)), {});
  EXPECT_EQ(d.batch_size, 0);
  EXPECT_TRUE(d.tf32);
  EXPECT_EQ(load_config(p, {"run.batch_size=64", "run.tf32=false"}).batch_size, 64);
  EXPECT_FALSE(load_config(p, {"run.tf32=false"}).tf32);
  EXPECT_FALSE(c.conv_transforms);  // the default: direct convolutions only
  EXPECT_TRUE(load_config(p, {"run.conv_transforms=true"}).conv_transforms);
  EXPECT_TRUE(load_config(write("ct.toml", config_to_toml(load_config(p, {"run.conv_transforms=true"}))), {})
                  .conv_transforms);  // written into the run's config.toml
  EXPECT_NE(error_of(p, {"run.conv_transforms=\"yes\""}).find("run.conv_transforms"), std::string::npos);
  EXPECT_NE(error_of(p, {"run.batch_size=\"big\""}).find("must be an integer or \"auto\""), std::string::npos);
  EXPECT_NE(error_of(p, {"run.batch_size=0"}).find("run.batch_size"), std::string::npos);
  EXPECT_NE(error_of(p, {"run.tf32=1"}).find("run.tf32"), std::string::npos);
}

// configs/README.md documents every key (it is generated from the same list).
TEST(ConfigDocs, ReadmeListsEveryKey) {
  std::ifstream in(std::string(QSWEEP_SOURCE_DIR) + "/configs/README.md");
  ASSERT_TRUE(in.good()) << "configs/README.md is missing";
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  for (const auto& k : config_keys()) {
    EXPECT_NE(text.find(std::string("`") + k.path + "`"), std::string::npos) << k.path << " is undocumented";
  }
}

// Every shipped config loads.
TEST(ConfigDocs, ShippedConfigsLoad) {
  int n = 0;
  for (const auto& e : fs::directory_iterator(std::string(QSWEEP_SOURCE_DIR) + "/configs")) {
    if (e.path().extension() != ".toml") continue;
    EXPECT_NO_THROW(load_config(e.path().string(), {})) << e.path();
    ++n;
  }
  EXPECT_GE(n, 2);
}

}  // namespace
}  // namespace qsweep
