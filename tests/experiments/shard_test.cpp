// Sharding, merging and resuming, through the qsweep binary as users and SLURM run it.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "runtime/cpu_backend.h"
#include "runtime/data.h"
#include "runtime/onnx_import.h"
#include "runtime/scheduler.h"
#include "tests/runtime/onnx_builder.h"
#include "tests/shipped_models.h"

namespace qsweep {
namespace {

namespace fs = std::filesystem;

// The cost model's promise on the shipped model (issue: most expensive of 4 shards).
constexpr double kMaxShardImbalance = 1.2;

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class Shards : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!fs::exists(kFashionMnistDir)) GTEST_SKIP() << "dataset-fashion-mnist is not installed";
    dir_ = fs::temp_directory_path() / ("qsweep_shard_" + std::to_string(::getpid()) + "_" +
                                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A small grid: 300 images in batches of 50 (6 batches) x 10 layers x `bits` bit-widths.
  std::string common(const std::string& root, const std::string& bits = "[3,8]") const {
    return std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --quiet --out " + root +
           " --set data.eval.count=300 --set run.batch_size=50 --set data.calibration.count=100"
           " --set stats.bootstrap=100 --set 'quant.weight_bits=" + bits + "'";
  }
  int run(const std::string& args) const {
    const std::string cmd = std::string(QSWEEP_BINARY) + " " + args + " 2>>" + (dir_ / "stderr").string();
    const int st = std::system(cmd.c_str());
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  }
  // The one results folder under root/<experiment>.
  fs::path result(const fs::path& root, const std::string& experiment = "quickstart") const {
    std::vector<fs::path> found;
    for (const auto& e : fs::directory_iterator(root / experiment)) {
      if (e.path().filename().string()[0] != '.') found.push_back(e.path());
    }
    EXPECT_EQ(found.size(), 1u) << root;
    return found.empty() ? fs::path() : found[0];
  }
  // The hidden work folder of the (only) run under root/quickstart.
  fs::path work_of(const fs::path& root) const {
    for (const auto& e : fs::directory_iterator(root / "quickstart")) {
      if (e.path().extension() == ".work") return e.path();
    }
    ADD_FAILURE() << "no work folder under " << root;
    return {};
  }
  fs::path dir_;
};

TEST_F(Shards, MergedEqualsSingleProcessForOneToSevenShards) {
  ASSERT_EQ(run("run " + common((dir_ / "single").string())), 0) << slurp(dir_ / "stderr");
  const std::string expected = slurp(result(dir_ / "single") / "layerwise.csv");
  ASSERT_FALSE(expected.empty());
  for (int n = 1; n <= 7; ++n) {
    const fs::path root = dir_ / ("n" + std::to_string(n));
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(run("run " + common(root.string()) + " --shard " + std::to_string(i) + "/" + std::to_string(n)), 0)
          << slurp(dir_ / "stderr");
    }
    if (n > 1) {
      // Before the merge there is no results folder, only the hidden work folder.
      for (const auto& e : fs::directory_iterator(root / "quickstart")) {
        EXPECT_EQ(e.path().filename().string()[0], '.') << e.path();
      }
      ASSERT_EQ(run("merge " + work_of(root).string() + " --quiet"), 0)
          << slurp(dir_ / "stderr");
    }
    EXPECT_EQ(slurp(result(root) / "layerwise.csv"), expected) << n << " shards";
  }
}

TEST_F(Shards, DataIsSplitWhenShardsOutnumberCells) {
  // One bit-width: 10 cells over 7 shards forces chunks of batches.
  ASSERT_EQ(run("run " + common((dir_ / "single").string(), "[4]")), 0) << slurp(dir_ / "stderr");
  const fs::path root = dir_ / "split";
  for (int i = 0; i < 7; ++i) ASSERT_EQ(run("run " + common(root.string(), "[4]") + " --shard " + std::to_string(i) + "/7"), 0);
  ASSERT_EQ(run("merge " + work_of(root).string() + " --quiet"), 0)
      << slurp(dir_ / "stderr");
  EXPECT_EQ(slurp(result(root) / "layerwise.csv"), slurp(result(dir_ / "single") / "layerwise.csv"));
}

TEST_F(Shards, SeveralWorkersGiveTheSameNumbersAsOne) {
  ASSERT_EQ(run("run " + common((dir_ / "one").string())), 0) << slurp(dir_ / "stderr");
  ASSERT_EQ(run("run " + common((dir_ / "three").string()) + " --set 'run.devices=[0,1,2]'"), 0) << slurp(dir_ / "stderr");
  EXPECT_EQ(slurp(result(dir_ / "three") / "layerwise.csv"), slurp(result(dir_ / "one") / "layerwise.csv"));
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("run " + common((dir_ / "bad").string()) + " --set 'run.devices=[1,1]'"), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("'run.devices' lists a device twice"), std::string::npos) << slurp(dir_ / "stderr");
}

TEST_F(Shards, MergeRefusesMissingForeignAndCorruptedShards) {
  const fs::path root = dir_ / "r";
  const std::string id = " --run-id test-run";
  for (int i = 0; i < 3; ++i) ASSERT_EQ(run("run " + common(root.string()) + id + " --shard " + std::to_string(i) + "/3"), 0);
  const fs::path work = root / "quickstart" / ".test-run.work";
  const fs::path final_dir = root / "quickstart" / "test-run";
  // Missing: hide shard 1.
  fs::rename(work / "shard-1-of-3", dir_ / "held");
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("merge " + final_dir.string()), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("shard(s) 1 of 3 are missing or unfinished; run them (e.g. qsweep run CONFIG "
                                        "--shard 1/3 --run-id test-run --out " + root.string() +
                                        ", with the other shards' --set options)"),
            std::string::npos)
      << slurp(dir_ / "stderr");
  EXPECT_FALSE(fs::exists(final_dir));
  fs::rename(dir_ / "held", work / "shard-1-of-3");
  // Corrupted: flip a byte in one record.
  fs::path victim;
  for (const auto& e : fs::directory_iterator(work / "shard-2-of-3")) {
    if (e.path().extension() == ".rec") victim = e.path();
  }
  ASSERT_FALSE(victim.empty());
  const std::string good = slurp(victim);
  std::string bad = good;
  bad[bad.size() / 2] ^= 0x5a;
  std::ofstream(victim, std::ios::binary) << bad;
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("merge " + final_dir.string()), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("is corrupted"), std::string::npos) << slurp(dir_ / "stderr");
  EXPECT_FALSE(fs::exists(final_dir));
  std::ofstream(victim, std::ios::binary) << good;
  // Damaged: DONE.json fields of other types (a hand edit) are one sentence, not an internal error.
  const fs::path done1 = work / "shard-1-of-3" / "DONE.json";
  const std::string done_good = slurp(done1);
  for (const char* edit : {R"({"records": "three"})", R"({"config_sha256": 5})", R"({"grid_seconds": "1"})"}) {
    nlohmann::json dj = nlohmann::json::parse(done_good);
    dj.merge_patch(nlohmann::json::parse(edit));
    std::ofstream(done1) << dj.dump();
    fs::remove(dir_ / "stderr");
    EXPECT_EQ(run("merge " + final_dir.string()), 2) << edit;
    EXPECT_NE(slurp(dir_ / "stderr").find("shard 1 (DONE.json is damaged)"), std::string::npos) << slurp(dir_ / "stderr");
    EXPECT_EQ(slurp(dir_ / "stderr").find("internal error"), std::string::npos) << slurp(dir_ / "stderr");
    EXPECT_FALSE(fs::exists(final_dir));
  }
  std::ofstream(done1) << done_good;
  // Copied between shard folders (audit: accepted, or "cell 1 of batch 0 recorded twice"
  // naming no shard): another shard's DONE.json, another shard's records, a stray folder.
  const fs::path done2 = work / "shard-2-of-3" / "DONE.json";
  const std::string done2_good = slurp(done2);
  fs::copy_file(work / "shard-0-of-3" / "DONE.json", done2, fs::copy_options::overwrite_existing);
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("merge " + final_dir.string()), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("shard 2 (DONE.json names another shard)"), std::string::npos)
      << slurp(dir_ / "stderr");
  std::ofstream(done2) << done2_good;
  fs::path rec0;
  for (const auto& e : fs::directory_iterator(work / "shard-0-of-3")) {
    if (e.path().extension() == ".rec") rec0 = e.path();
  }
  const fs::path copied = work / "shard-1-of-3" / ("copy-" + rec0.filename().string());
  fs::copy_file(rec0, copied);
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("merge " + final_dir.string()), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("shards 0 and 1 (both hold cell "), std::string::npos) << slurp(dir_ / "stderr");
  fs::remove(copied);
  fs::create_directories(work / "shard-3-of-3");
  fs::copy_file(done2, work / "shard-3-of-3" / "DONE.json");
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("merge " + final_dir.string()), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("shard-3-of-3' is not a shard folder qsweep writes"), std::string::npos)
      << slurp(dir_ / "stderr");
  fs::remove_all(work / "shard-3-of-3");
  EXPECT_FALSE(fs::exists(final_dir));
  // Something at the results path: said before any work, without a --run-id merge lacks.
  fs::create_directories(final_dir);
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("merge " + final_dir.string()), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("already exists and holds no finished run; move it away and merge again"),
            std::string::npos)
      << slurp(dir_ / "stderr");
  fs::remove(final_dir);
  // Foreign: shard 0 recomputed from another config (act_bits 6) into the same run id.
  const fs::path other = dir_ / "other";
  ASSERT_EQ(run("run " + common(other.string()) + id + " --set quant.act_bits=6 --shard 0/3"), 0);
  fs::remove_all(work / "shard-0-of-3");
  fs::copy(other / "quickstart" / ".test-run.work" / "shard-0-of-3", work / "shard-0-of-3");
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("merge " + final_dir.string()), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("shard 0 (another config)"), std::string::npos) << slurp(dir_ / "stderr");
  EXPECT_FALSE(fs::exists(final_dir));
  // A shard run with another config into an existing run folder is refused up front.
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("run " + common(root.string()) + id + " --set quant.act_bits=6 --shard 0/3"), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("belongs to a run with another configuration"), std::string::npos);
}

// merge on work folders it cannot merge says what to do instead (review: shard advice for an
// unsharded run, "not a qsweep run folder" for the one qsweep submit made).
TEST_F(Shards, MergeSaysWhatToDoWithFoldersThatAreNotShards) {
  const fs::path exp = dir_ / "r" / "quickstart";
  fs::create_directories(exp / ".s.work" / "slurm");
  EXPECT_EQ(run("merge " + (exp / "s").string()), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("holds only the scripts of qsweep submit: no shard has started; run the array "
                                        "first"),
            std::string::npos)
      << slurp(dir_ / "stderr");
  fs::remove(dir_ / "stderr");
  // An unsharded run stopped with records.
  ASSERT_EQ(run("run " + common((dir_ / "r").string()) + " --run-id u"), 0) << slurp(dir_ / "stderr");
  fs::create_directories(exp / ".u.work" / "shard-0-of-1");
  fs::copy_file(exp / "u" / "config.toml", exp / ".u.work" / "config.toml");
  std::ofstream(exp / ".u.work" / "shard-0-of-1" / "batch-000000.rec") << "x";
  fs::rename(exp / "u", dir_ / "u-moved");
  EXPECT_EQ(run("merge " + (exp / "u").string()), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("holds the records of an unfinished run, which is not sharded: run the same "
                                        "qsweep run command again to resume it"),
            std::string::npos)
      << slurp(dir_ / "stderr");
}

// Starts qsweep, kills it with `sig` after `delay`, and returns its exit status.
int run_and_kill(const std::string& args, int sig, std::chrono::milliseconds delay) {
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string cmd = "exec " + std::string(QSWEEP_BINARY) + " " + args + " 2>/dev/null";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  std::this_thread::sleep_for(delay);
  kill(pid, sig);
  int st = 0;
  waitpid(pid, &st, 0);
  return st;
}

TEST_F(Shards, KilledRunsResumeToIdenticalResults) {
  // 2,000 images in batches of 50: 40 batches, a few seconds of work.
  const auto args = [&](const fs::path& root) {
    return "run " + std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --quiet --out " + root.string() +
           " --set data.eval.count=2000 --set run.batch_size=50 --set data.calibration.count=100"
           " --set stats.bootstrap=100 --set 'quant.weight_bits=[3,5,8]'";
  };
  ASSERT_EQ(run(args(dir_ / "clean")), 0) << slurp(dir_ / "stderr");
  const std::string expected = slurp(result(dir_ / "clean") / "layerwise.csv");
  for (int seed = 1; seed <= 4; ++seed) {
    const fs::path root = dir_ / ("kill" + std::to_string(seed));
    std::mt19937 rng(seed);
    // Kill at 2 random moments (SIGKILL: no chance to clean up), then let it finish.
    for (int k = 0; k < 2; ++k) {
      const int ms = std::uniform_int_distribution<int>(300, 2500)(rng);
      run_and_kill(args(root), SIGKILL, std::chrono::milliseconds(ms));
      // Nothing that looks complete: no visible results folder unless the run had finished.
      // (Killed early, the run has not created its folders yet.)
      if (!fs::exists(root / "quickstart")) continue;
      for (const auto& e : fs::directory_iterator(root / "quickstart")) {
        if (e.path().filename().string()[0] != '.') EXPECT_TRUE(fs::exists(e.path() / "summary.json")) << e.path();
      }
    }
    ASSERT_EQ(run(args(root)), 0) << slurp(dir_ / "stderr");
    EXPECT_EQ(slurp(result(root) / "layerwise.csv"), expected) << "seed " << seed;
    // The work folder is gone once the results are in.
    for (const auto& e : fs::directory_iterator(root / "quickstart")) EXPECT_NE(e.path().extension(), ".work");
  }
}

// Record files under `root` whose names start with `prefix`.
size_t count_records(const fs::path& root, const std::string& prefix = "") {
  size_t n = 0;
  if (!fs::exists(root)) return n;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    n += e.path().extension() == ".rec" && e.path().filename().string().rfind(prefix, 0) == 0;
  }
  return n;
}

// Starts qsweep, sends `sig` (`times` times, 50 ms apart: signals still pending merge into
// one) once a record named `prefix`* exists under `root` (bounded wait), and returns its exit
// status.
int signal_after_first_record(const std::string& args, const fs::path& root, const std::string& prefix, int sig,
                              int times = 1, const std::string& shell_first = "") {
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string cmd = shell_first + "exec " + std::string(QSWEEP_BINARY) + " " + args + " 2>/dev/null";
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  while (count_records(root, prefix) == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  for (int i = 0; i < times; ++i) {
    if (i > 0) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    kill(pid, sig);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  return st;
}

TEST_F(Shards, SigtermCheckpointsAndExits143) {
  const std::string a = "run " + std::string(QSWEEP_SOURCE_DIR) +
                        "/configs/quickstart.toml --quiet --out " + (dir_ / "t").string() +
                        " --set data.eval.count=3000 --set run.batch_size=50 --set data.calibration.count=100";
  // Signal once the grid has recorded its first batch.
  const int st = signal_after_first_record(a, dir_ / "t", "batch-", SIGTERM);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) GTEST_SKIP() << "the run finished before the signal";
  ASSERT_TRUE(WIFEXITED(st)) << "SIGTERM must end the run cleanly, not kill it";
  EXPECT_EQ(WEXITSTATUS(st), 143);
  const size_t kept = count_records(dir_ / "t");
  EXPECT_GT(kept, 0u) << "finished batches are kept";
  // The stopped attempt's grid time is kept beside its records, and the resumed run's
  // grid_seconds adds its own to it.
  double first = 0.0;
  for (const auto& e : fs::recursive_directory_iterator(dir_ / "t")) {
    if (e.path().filename() == "grid_seconds.json") first = nlohmann::json::parse(slurp(e.path()))["grid_seconds"];
  }
  EXPECT_GT(first, 0.0) << "grid_seconds.json of the stopped attempt";
  ASSERT_EQ(run(a), 0) << slurp(dir_ / "stderr");
  EXPECT_TRUE(fs::exists(result(dir_ / "t") / "summary.json"));
  EXPECT_EQ(nlohmann::json::parse(slurp(result(dir_ / "t") / "manifest.json"))["batches_from_earlier_attempts"], kept);
  EXPECT_GT(nlohmann::json::parse(slurp(result(dir_ / "t") / "summary.json"))["grid_seconds"].get<double>(), first);
}

// SIGHUP (a closed terminal or SSH session) stops a run as SIGTERM does (audit: it killed the
// run without a word).
TEST_F(Shards, SighupStopsLikeSigterm) {
  const std::string a = "run " + std::string(QSWEEP_SOURCE_DIR) +
                        "/configs/quickstart.toml --quiet --out " + (dir_ / "h").string() +
                        " --set data.eval.count=3000 --set run.batch_size=50 --set data.calibration.count=100";
  const int st = signal_after_first_record(a, dir_ / "h", "batch-", SIGHUP);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) GTEST_SKIP() << "the run finished before the signal";
  ASSERT_TRUE(WIFEXITED(st)) << "SIGHUP must end the run cleanly, not kill it";
  EXPECT_EQ(WEXITSTATUS(st), 143);
  EXPECT_GT(count_records(dir_ / "h"), 0u);
  // Under nohup (SIGHUP ignored) the run goes on to its end (review: the handler replaced
  // nohup's SIG_IGN, so a logout stopped it).
  std::string b = a;
  b.replace(b.find((dir_ / "h").string()), (dir_ / "h").string().size(), (dir_ / "nohup").string());
  const int nohup = signal_after_first_record(b, dir_ / "nohup", "batch-", SIGHUP, 1, "trap '' HUP; ");
  ASSERT_TRUE(WIFEXITED(nohup));
  EXPECT_EQ(WEXITSTATUS(nohup), 0);
}

// A run killed without a word (SIGKILL, a lost node) keeps its grid time up to its last
// recorded batch, and the resumed run's grid_seconds adds to it (audit: it restarted at 0).
TEST_F(Shards, SigkillKeepsTheGridTimeOfTheRecordedBatches) {
  const std::string a = "run " + std::string(QSWEEP_SOURCE_DIR) +
                        "/configs/quickstart.toml --quiet --out " + (dir_ / "k").string() +
                        " --set data.eval.count=3000 --set run.batch_size=50 --set data.calibration.count=100";
  const int st = signal_after_first_record(a, dir_ / "k", "batch-", SIGKILL);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) GTEST_SKIP() << "the run finished before the signal";
  ASSERT_TRUE(WIFSIGNALED(st));
  double first = 0.0;
  for (const auto& e : fs::recursive_directory_iterator(dir_ / "k")) {
    if (e.path().filename() == "grid_seconds.json") first = nlohmann::json::parse(slurp(e.path()))["grid_seconds"];
  }
  EXPECT_GT(first, 0.0) << "grid_seconds.json of the killed attempt";
  ASSERT_EQ(run(a), 0) << slurp(dir_ / "stderr");
  EXPECT_GT(nlohmann::json::parse(slurp(result(dir_ / "k") / "summary.json"))["grid_seconds"].get<double>(), first);
}

// `timeout` and some schedulers send one stop to the process and one to its process group: two
// signals at once are one stop (exit 143, records kept), not the "second signal" that ends the
// process outright (exit 130/143 by the signal, its staging folder left behind).
TEST_F(Shards, TwoSignalsAtOnceAreOneStop) {
  const std::string a = "run " + std::string(QSWEEP_SOURCE_DIR) +
                        "/configs/quickstart.toml --quiet --out " + (dir_ / "t").string() +
                        " --set data.eval.count=6000 --set run.batch_size=1000 --set data.calibration.count=100" +
                        " --set run.threads=1";  // the batch in flight outlasts the 50 ms between the signals
  const int st = signal_after_first_record(a, dir_ / "t", "batch-", SIGINT, 2);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) GTEST_SKIP() << "the run finished before the signal";
  ASSERT_TRUE(WIFEXITED(st)) << "killed by signal " << (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
  EXPECT_EQ(WEXITSTATUS(st), 143);
  EXPECT_GT(count_records(dir_ / "t"), 0u);
}

// run.batch_size = "auto" may come out otherwise when a stopped run resumes (here: less
// memory available): the records cut at the first size are computed again, not stood in for
// batches of the second (which gave a float top-1 of 46% or 129%); the result equals an
// uninterrupted run's.
TEST_F(Shards, AResumedAutoBatchSizeOfAnotherSizeRecomputesItsBatches) {
  const std::string a = "run " + std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --quiet --run-id r" +
                        " --set data.eval.count=3000 --set data.calibration.count=32 --set 'quant.weight_bits=[4]'" +
                        " --set output.plots=false --set run.threads=2 --set 'run.batch_size=\"auto\"'";
  setenv("QSWEEP_AVAILABLE_MEMORY", "80000000", 1);  // 81 images per batch
  const int st = signal_after_first_record(a + " --out " + (dir_ / "t").string(), dir_ / "t", "batch-", SIGTERM);
  unsetenv("QSWEEP_AVAILABLE_MEMORY");
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) GTEST_SKIP() << "the run finished before the signal";
  ASSERT_TRUE(WIFEXITED(st));
  ASSERT_EQ(WEXITSTATUS(st), 143);
  ASSERT_GT(count_records(dir_ / "t"), 0u);
  setenv("QSWEEP_AVAILABLE_MEMORY", "40000000", 1);  // 38 images per batch
  const int resumed = run(a + " --out " + (dir_ / "t").string()), fresh = run(a + " --out " + (dir_ / "u").string());
  unsetenv("QSWEEP_AVAILABLE_MEMORY");
  ASSERT_EQ(resumed, 0) << slurp(dir_ / "stderr");
  ASSERT_EQ(fresh, 0) << slurp(dir_ / "stderr");
  EXPECT_EQ(slurp(result(dir_ / "t") / "layerwise.csv"), slurp(result(dir_ / "u") / "layerwise.csv"));
  EXPECT_EQ(nlohmann::json::parse(slurp(result(dir_ / "t") / "manifest.json"))["batches_from_earlier_attempts"], 0);
}

// Shards of an "auto" batch size on machines with other memory: the first shard's size is
// taken wherever it fits (the merge equals one process at that size), and a shard where it
// does not fit is refused before it computes, not at merge.
TEST_F(Shards, AutoBatchSizeIsSettledByTheFirstShard) {
  const std::string a = std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --quiet" +
                        " --set data.eval.count=600 --set data.calibration.count=32 --set 'quant.weight_bits=[4]'" +
                        " --set output.plots=false --set run.threads=2 --set stats.bootstrap=0";
  const std::string sharded = "run " + a + " --set 'run.batch_size=\"auto\"' --out " + (dir_ / "t").string();
  setenv("QSWEEP_AVAILABLE_MEMORY", "40000000", 1);  // 38 fit: 38 images per batch
  ASSERT_EQ(run(sharded + " --run-id r --shard 0/3"), 0) << slurp(dir_ / "stderr");
  setenv("QSWEEP_AVAILABLE_MEMORY", "200000000", 1);  // would choose 75 (600 / (4 x 2)); takes 38
  // Even from a damaged record of the size (a hand edit): the work folder's config.toml has it.
  std::ofstream(dir_ / "t" / "quickstart" / ".r.work" / "auto_batch_size") << "abc";
  fs::remove(dir_ / "stderr");
  ASSERT_EQ(run(sharded + " --run-id r --shard 1/3"), 0) << slurp(dir_ / "stderr");
  EXPECT_NE(slurp(dir_ / "stderr").find("is damaged; the batch size this run computes with, 38, is taken from"),
            std::string::npos)
      << slurp(dir_ / "stderr");
  ASSERT_EQ(run(sharded + " --run-id r --shard 2/3"), 0) << slurp(dir_ / "stderr");
  unsetenv("QSWEEP_AVAILABLE_MEMORY");
  ASSERT_EQ(run("merge " + (dir_ / "t" / "quickstart" / "r").string()), 0) << slurp(dir_ / "stderr");
  ASSERT_EQ(run("run " + a + " --set run.batch_size=38 --out " + (dir_ / "u").string()), 0) << slurp(dir_ / "stderr");
  EXPECT_EQ(slurp(dir_ / "t" / "quickstart" / "r" / "layerwise.csv"), slurp(result(dir_ / "u") / "layerwise.csv"));
  // The other way round: 75 chosen first, then a machine where only 38 fit.
  setenv("QSWEEP_AVAILABLE_MEMORY", "200000000", 1);
  ASSERT_EQ(run(sharded + " --run-id q --shard 0/3"), 0) << slurp(dir_ / "stderr");
  setenv("QSWEEP_AVAILABLE_MEMORY", "40000000", 1);
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run(sharded + " --run-id q --shard 1/3"), 2);
  unsetenv("QSWEEP_AVAILABLE_MEMORY");
  EXPECT_NE(slurp(dir_ / "stderr").find("shards compute 75 images per batch (recorded for this run in"),
            std::string::npos)
      << slurp(dir_ / "stderr");
  EXPECT_EQ(count_records(dir_ / "t" / "quickstart" / ".q.work" / "shard-1-of-3"), 0u);  // nothing computed
  // Shards starting together: one has recorded its size, not yet config.toml, which merge
  // reads the batch size from; the next shard writes config.toml with the recorded size, not
  // its own (review: a race that let every shard compute at 38 and merge refuse them).
  const fs::path w = dir_ / "t" / "quickstart" / ".p.work";
  fs::create_directories(w);
  std::ofstream(w / "auto_batch_size") << "38\n";
  setenv("QSWEEP_AVAILABLE_MEMORY", "200000000", 1);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(run(sharded + " --run-id p --shard " + std::to_string(i) + "/3"), 0) << slurp(dir_ / "stderr");
    if (i == 0) EXPECT_NE(slurp(w / "config.toml").find("batch_size = 38"), std::string::npos) << slurp(w / "config.toml");
  }
  unsetenv("QSWEEP_AVAILABLE_MEMORY");
  ASSERT_EQ(run("merge " + (dir_ / "t" / "quickstart" / "p").string()), 0) << slurp(dir_ / "stderr");
  EXPECT_EQ(slurp(dir_ / "t" / "quickstart" / "p" / "layerwise.csv"), slurp(result(dir_ / "u") / "layerwise.csv"));
  // The first size is taken where the rule for a fixed size accepts it: 32 images per batch of
  // a 20-image split are 20 (review: 'at most 20 fit here' refused it).
  const std::string tiny = "run " + std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --quiet --out " +
                           (dir_ / "t").string() + " --set data.eval.count=20 --set data.calibration.count=20" +
                           " --set 'quant.weight_bits=[4]' --set output.plots=false --set stats.bootstrap=0" +
                           " --set 'run.batch_size=\"auto\"' --run-id tiny";
  ASSERT_EQ(run(tiny + " --shard 0/2"), 0) << slurp(dir_ / "stderr");
  EXPECT_EQ(slurp(dir_ / "t" / "quickstart" / ".tiny.work" / "auto_batch_size"), "32\n");
  setenv("QSWEEP_AVAILABLE_MEMORY", "8000000", 1);
  EXPECT_EQ(run(tiny + " --shard 1/2"), 0) << slurp(dir_ / "stderr");
  unsetenv("QSWEEP_AVAILABLE_MEMORY");
  EXPECT_EQ(run("merge " + (dir_ / "t" / "quickstart" / "tiny").string()), 0) << slurp(dir_ / "stderr");
  // An "auto" shard joining a run id whose shards asked for a number (the same run for the
  // identity) computes with that number (review: it computed at its own size, and merge refused).
  const std::string fixed = "run " + std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --quiet --out " +
                            (dir_ / "t").string() + " --set data.eval.count=300 --set data.calibration.count=20" +
                            " --set 'quant.weight_bits=[4]' --set output.plots=false --set stats.bootstrap=0" +
                            " --run-id fx";
  ASSERT_EQ(run(fixed + " --set run.batch_size=50 --shard 0/2"), 0) << slurp(dir_ / "stderr");
  ASSERT_EQ(run(fixed + " --set 'run.batch_size=\"auto\"' --shard 1/2"), 0) << slurp(dir_ / "stderr");
  EXPECT_EQ(run("merge " + (dir_ / "t" / "quickstart" / "fx").string()), 0) << slurp(dir_ / "stderr");
  // Shards of other sizes after all (the record of the size removed by hand): merge names them.
  const fs::path wo = dir_ / "t" / "quickstart" / ".o.work";
  setenv("QSWEEP_AVAILABLE_MEMORY", "40000000", 1);
  ASSERT_EQ(run(sharded + " --run-id o --shard 0/2"), 0) << slurp(dir_ / "stderr");
  fs::remove(wo / "auto_batch_size");
  fs::remove(wo / "config.toml");
  setenv("QSWEEP_AVAILABLE_MEMORY", "200000000", 1);
  ASSERT_EQ(run(sharded + " --run-id o --shard 1/2"), 0) << slurp(dir_ / "stderr");
  unsetenv("QSWEEP_AVAILABLE_MEMORY");
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("merge " + (dir_ / "t" / "quickstart" / "o").string()), 2);
  const std::string err = slurp(dir_ / "stderr");
  EXPECT_NE(err.find("': shard 0 (batch-"), std::string::npos) << err;
  EXPECT_NE(err.find(": batches of another size than the 75 of '"), std::string::npos) << err;
  EXPECT_EQ(err.find("DONE.json lists"), std::string::npos) << err;
}

// A second process of a running "auto" run (a duplicate command, or a requeued task) on a machine
// with less memory is refused by the lock before it changes anything: the recorded size stays
// (review: it rewrote it first, and the first run's resume then recomputed every batch).
TEST_F(Shards, AProcessRefusedByTheLockChangesNothing) {
  const std::string a = "run " + std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --quiet --run-id l --out " +
                        (dir_ / "t").string() +
                        " --set data.eval.count=10000 --set data.calibration.count=32 --set 'quant.weight_bits=[3,4,5,6,8]'" +
                        " --set output.plots=false --set stats.bootstrap=0 --set 'run.batch_size=\"auto\"'";
  const fs::path work = dir_ / "t" / "quickstart" / ".l.work";
  std::ofstream(dir_ / "first.sh") << "QSWEEP_AVAILABLE_MEMORY=2000000000 exec " << QSWEEP_BINARY << " " << a << " 2>"
                                   << (dir_ / "e1").string() << "\n";
  ASSERT_EQ(std::system(("sh " + (dir_ / "first.sh").string() + " & echo $! >" + (dir_ / "pid").string()).c_str()), 0);
  // Wait for its first record: it holds the lock and has recorded its size.
  for (int i = 0; i < 600 && count_records(work) == 0; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  const std::string pinned = slurp(work / "auto_batch_size");
  ASSERT_FALSE(pinned.empty());
  setenv("QSWEEP_AVAILABLE_MEMORY", "30000000", 1);  // a smaller machine: its own size would differ
  const int second = run(a);
  unsetenv("QSWEEP_AVAILABLE_MEMORY");
  const pid_t pid = static_cast<pid_t>(std::stol(slurp(dir_ / "pid")));
  const bool still_running = kill(pid, 0) == 0;
  kill(pid, SIGKILL);
  if (!still_running && second == 0) GTEST_SKIP() << "the first run finished before the second started";
  EXPECT_EQ(second, 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("is being computed by another process (pid "), std::string::npos)
      << slurp(dir_ / "stderr");
  EXPECT_EQ(slurp(dir_ / "stderr").find("computed again"), std::string::npos) << slurp(dir_ / "stderr");
  EXPECT_EQ(slurp(work / "auto_batch_size"), pinned);
}

// A staging folder that a process of this host left behind (killed outright) and untouched for
// 10 minutes is removed by the next run of its run id; one of a live process, or a recent one,
// stays.
TEST_F(Shards, AbandonedStagingFoldersAreRemovedByTheNextRun) {
  const pid_t dead = fork();
  if (dead == 0) _exit(0);
  waitpid(dead, nullptr, 0);
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  const fs::path exp = dir_ / "t" / "quickstart";
  const fs::path abandoned = exp / (".r.partial-" + std::string(host).substr(0, 40) + "-" + std::to_string(dead));
  const fs::path alive = exp / (".r.partial-" + std::string(host).substr(0, 40) + "-" + std::to_string(getppid()));
  fs::create_directories(abandoned);
  std::ofstream(abandoned / "summary.json") << "{}";
  fs::create_directories(alive);
  const fs::path recent = exp / (".r.partial-" + std::string(host).substr(0, 40) + "-" + std::to_string(dead + 1000000));
  fs::create_directories(recent);  // no such process, but touched a moment ago: maybe another container's
  fs::last_write_time(abandoned, fs::file_time_type::clock::now() - std::chrono::hours(1));
  fs::last_write_time(alive, fs::file_time_type::clock::now() - std::chrono::hours(1));
  ASSERT_EQ(run("run " + std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --quiet --run-id r --out " +
                (dir_ / "t").string() + " --set data.eval.count=100 --set data.calibration.count=16" +
                " --set 'quant.weight_bits=[8]' --set output.plots=false"),
            0)
      << slurp(dir_ / "stderr");
  EXPECT_TRUE(fs::exists(exp / "r" / "summary.json"));
  EXPECT_FALSE(fs::exists(abandoned));
  EXPECT_TRUE(fs::exists(alive));
  EXPECT_TRUE(fs::exists(recent));
  // A process killed outright at the end left a staging folder (now old) and its work folder
  // beside the finished results: the same command, finding the run complete, removes both
  // (audit: 'already complete' reruns left them for good).
  fs::last_write_time(recent, fs::file_time_type::clock::now() - std::chrono::hours(1));
  fs::create_directories(exp / ".r.work" / "shard-0-of-1");
  std::ofstream(exp / ".r.work" / "shard-0-of-1" / "batch-000000.rec") << "x";
  ASSERT_EQ(run("run " + std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --quiet --run-id r --out " +
                (dir_ / "t").string() + " --set data.eval.count=100 --set data.calibration.count=16" +
                " --set 'quant.weight_bits=[8]' --set output.plots=false"),
            0)
      << slurp(dir_ / "stderr");
  EXPECT_FALSE(fs::exists(recent));
  EXPECT_FALSE(fs::exists(exp / ".r.work"));
  EXPECT_TRUE(fs::exists(alive));
  // A submitted array's scripts and logs stay (its other tasks and merge job still write there).
  fs::create_directories(exp / ".r.work" / "slurm");
  std::ofstream(exp / ".r.work" / "slurm" / "array.sbatch") << "#!/bin/sh\n";
  fs::create_directories(exp / ".r.work" / "shard-0-of-1");
  ASSERT_EQ(run("run " + std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml --quiet --run-id r --out " +
                (dir_ / "t").string() + " --set data.eval.count=100 --set data.calibration.count=16" +
                " --set 'quant.weight_bits=[8]' --set output.plots=false"),
            0)
      << slurp(dir_ / "stderr");
  EXPECT_TRUE(fs::exists(exp / ".r.work" / "slurm" / "array.sbatch"));
  EXPECT_FALSE(fs::exists(exp / ".r.work" / "shard-0-of-1"));
  EXPECT_TRUE(fs::exists(exp / "r" / "summary.json"));
}

// A model file changed under the same path between attempts (same architecture, other
// weights): the shard computes its batches again instead of keeping the old model's, and the
// merged grid equals a single-process run of the new model.
TEST_F(Shards, ChangedInputsAreComputedAgainNotMixed) {
  auto model = [&](float scale) {
    test::OnnxBuilder b;
    std::vector<float> w(10 * 784);
    for (size_t i = 0; i < w.size(); ++i) w[i] = scale * static_cast<float>(static_cast<int>(i * 7919 % 23) - 11);
    b.input("x", {1, 28, 28})
        .initializer("w", w, {10, 784})
        .initializer("b", std::vector<float>(10, 0.0f), {10})
        .node("Flatten", {"x"}, {"f"}, {}, "flatten")
        .node("Gemm", {"f", "w", "b"}, {"y"}, {test::attr_i("transB", 1)}, "fc")
        .output("y");
    std::ofstream(dir_ / "m.onnx", std::ios::binary | std::ios::trunc) << b.serialize();
  };
  const std::string with_model = " --set 'model.path=\"" + (dir_ / "m.onnx").string() + "\"'";
  const fs::path root = dir_ / "sharded";
  model(0.01f);
  ASSERT_EQ(run("run " + common(root.string()) + with_model + " --shard 0/2"), 0) << slurp(dir_ / "stderr");
  model(-0.02f);
  fs::remove(dir_ / "stderr");
  ASSERT_EQ(run("run " + common(root.string()) + with_model + " --shard 0/2"), 0) << slurp(dir_ / "stderr");
  EXPECT_NE(slurp(dir_ / "stderr").find("the model file changed since the earlier attempt"), std::string::npos)
      << slurp(dir_ / "stderr");
  ASSERT_EQ(run("run " + common(root.string()) + with_model + " --shard 1/2"), 0) << slurp(dir_ / "stderr");
  ASSERT_EQ(run("merge " + work_of(root).string() + " --quiet"), 0) << slurp(dir_ / "stderr");
  ASSERT_EQ(run("run " + common((dir_ / "single").string()) + with_model), 0) << slurp(dir_ / "stderr");
  EXPECT_EQ(slurp(result(root) / "layerwise.csv"), slurp(result(dir_ / "single") / "layerwise.csv"));
  // A merged run's grid_seconds is its shards' compute time, summed (it was 0).
  EXPECT_GT(nlohmann::json::parse(slurp(result(root) / "summary.json"))["grid_seconds"].get<double>(), 0.0);
}

// Shards given their --out from other working folders (so spelt otherwise) are one run, and
// merge writes the results where it is pointed, from any working folder (it used to take the
// last shard's output.root, resolved against its own working folder), also given a bare run
// id in the experiment folder. With run.batch_size = "auto" (merge compared the shards'
// configs with the size chosen and refused them).
TEST_F(Shards, MergeWritesWhereItIsPointed) {
  fs::create_directories(dir_ / "a" / "b");
  const std::string cfg = std::string(QSWEEP_SOURCE_DIR) + "/configs/quickstart.toml";
  const std::string small = " --quiet --set data.eval.count=200 --set data.calibration.count=32 --set 'quant.weight_bits=[4]'"
                            " --set output.plots=false --run-id m --set 'run.batch_size=\"auto\"'";
  auto in = [&](const fs::path& cwd, const std::string& args) {
    return std::system(("cd " + cwd.string() + " && " + QSWEEP_BINARY + " " + args + " 2>" + (dir_ / "stderr").string())
                           .c_str());
  };
  ASSERT_EQ(in(dir_ / "a", "run " + cfg + small + " --out res --shard 0/2"), 0) << slurp(dir_ / "stderr");
  ASSERT_EQ(in(dir_ / "a" / "b", "run " + cfg + small + " --out ../res/ --shard 1/2"), 0) << slurp(dir_ / "stderr");
  // Three merges at once (the SLURM merge job, a requeue, one by hand): each exits 0; one merges,
  // the others wait for it and find the results (audit: they failed with "already exists").
  const std::string m = std::string(QSWEEP_BINARY) + " merge " + (dir_ / "a/res/quickstart/m").string();
  const std::string three = "cd " + dir_.string() + "; (" + m + " >o1 2>e1; echo $? >c1) & (" + m +
                            " >o2 2>e2; echo $? >c2) & (" + m + " >o3 2>e3; echo $? >c3) & wait";
  ASSERT_EQ(std::system(("sh -c '" + three + "'").c_str()), 0);
  int merged = 0;
  for (const char* k : {"1", "2", "3"}) {
    EXPECT_EQ(slurp(dir_ / (std::string("c") + k)), "0\n") << slurp(dir_ / (std::string("e") + k));
    merged += slurp(dir_ / (std::string("o") + k)).find("merged 2 shards") != std::string::npos;
  }
  EXPECT_EQ(merged, 1);
  EXPECT_TRUE(fs::exists(dir_ / "a/res/quickstart/m/summary.json"));
  EXPECT_FALSE(fs::exists(dir_ / "res")) << "results written relative to merge's working folder";
  // Merged once more: served while intact, refused once a table is cut (audit: "already complete").
  EXPECT_EQ(std::system((m + " >/dev/null 2>" + (dir_ / "stderr").string()).c_str()), 0);
  const fs::path table = dir_ / "a/res/quickstart/m/layerwise.csv";
  const std::string text = slurp(table);
  std::ofstream(table, std::ios::trunc) << text.substr(0, text.find('\n') + 1);
  EXPECT_NE(std::system((m + " >/dev/null 2>" + (dir_ / "stderr").string()).c_str()), 0);
  EXPECT_NE(slurp(dir_ / "stderr").find("holds a damaged finished run (" + table.string() + ": 0 rows"),
            std::string::npos)
      << slurp(dir_ / "stderr");
}

// One run id, one split: a shard of another count is refused at run time, before any work
// (merge could not combine them); an empty --shard is an error, not an unsharded run.
TEST_F(Shards, AnotherShardCountForTheSameRunIsRefused) {
  const fs::path root = dir_ / "mixed";
  ASSERT_EQ(run("run " + common(root.string()) + " --run-id sh --shard 0/2"), 0) << slurp(dir_ / "stderr");
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("run " + common(root.string()) + " --run-id sh --shard 1/3"), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("holds the grid split 2 ways; this run has it split 3 ways (shard 1/3)"),
            std::string::npos)
      << slurp(dir_ / "stderr");
  EXPECT_EQ(count_records(work_of(root) / "shard-1-of-3"), 0u);  // refused before computing
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("run " + common(root.string()) + " --run-id sh --shard ''"), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("--shard '': expected I/N"), std::string::npos) << slurp(dir_ / "stderr");
  // An unused shard folder (a process stopped before its first batch leaves one, with its lock
  // file) fixes no split: a run of another count, and the merge, ignore it (review).
  fs::create_directories(work_of(root) / "shard-0-of-5");
  std::ofstream(work_of(root) / "shard-0-of-5" / "lock") << "pid 1 on x\n";
  std::ofstream(work_of(root) / "shard-0-of-5" / "inputs.json") << "{}";  // stopped while quantizing
  // ... but one whose lock a process holds is in use: a run of another count started at the
  // same moment (review: both computed, and the run could not be merged).
  fs::create_directories(work_of(root) / "shard-0-of-4");
  // flock -o: the lock stays with flock itself (not the sleep it runs), so killing it releases it.
  const std::string holder = "flock -o " + (work_of(root) / "shard-0-of-4" / "lock").string() + " sleep 30";
  std::ofstream(dir_ / "hold.sh") << holder << " & echo $! >" << (dir_ / "holder").string() << "\nsleep 0.3\n";
  ASSERT_EQ(std::system(("sh " + (dir_ / "hold.sh").string()).c_str()), 0);
  fs::remove(dir_ / "stderr");
  EXPECT_EQ(run("run " + common(root.string()) + " --run-id sh --shard 1/2"), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("holds the grid split 4 ways"), std::string::npos) << slurp(dir_ / "stderr");
  std::system(("kill $(cat " + (dir_ / "holder").string() + ") 2>/dev/null").c_str());
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  ASSERT_EQ(run("run " + common(root.string()) + " --run-id sh --shard 1/2"), 0) << slurp(dir_ / "stderr");
  // A lock held for a moment (another run's check of this folder) is waited for, not refused
  // (review: a requeued array's tasks, starting together, refused each other).
  const std::string moment = "flock -o " + (work_of(root) / "shard-1-of-2" / "lock").string() + " sleep 0.4 & sleep 0.1";
  ASSERT_EQ(std::system(("sh -c '" + moment + "'").c_str()), 0);
  EXPECT_EQ(run("run " + common(root.string()) + " --run-id sh --shard 1/2"), 0) << slurp(dir_ / "stderr");
  // A merge waiting for another one (here a lock held by hand) stops at Ctrl-C (review: it
  // waited on; flock() restarts after a signal).
  const std::string held = "flock " + (work_of(root) / "lock").string() + " sleep 5 & sleep 0.3; " + QSWEEP_BINARY +
                           " merge " + work_of(root).string() + " --quiet & m=$!; sleep 0.8; kill -INT $m; wait $m; " +
                           "echo $? >" + (dir_ / "merge_code").string();
  const auto t0 = std::chrono::steady_clock::now();
  std::system(("sh -c '" + held + "' 2>" + (dir_ / "stderr").string()).c_str());
  EXPECT_EQ(slurp(dir_ / "merge_code"), "143\n") << slurp(dir_ / "stderr");
  EXPECT_NE(slurp(dir_ / "stderr").find("interrupted while waiting for another merge of this run"), std::string::npos)
      << slurp(dir_ / "stderr");
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(4));
  EXPECT_EQ(run("merge " + work_of(root).string() + " --quiet"), 0) << slurp(dir_ / "stderr");
}

// A study (additivity: a single-layer grid, then whole-network configurations) stopped by
// SIGTERM keeps the batches both phases finished; the same command resumes from them and
// writes the numbers of an uninterrupted run, byte for byte, and nothing looks finished before.
TEST_F(Shards, SigtermedStudyResumesToIdenticalResults) {
  const auto args = [&](const fs::path& root, bool quiet) {
    return "run " + std::string(QSWEEP_SOURCE_DIR) + "/configs/additivity_resnet.toml --out " + root.string() +
           (quiet ? " --quiet" : "") +
           " --set data.eval.count=2000 --set run.batch_size=100 --set data.calibration.count=100"
           " --set stats.bootstrap=100 --set output.plots=false"
           " --set run.threads=2";  // two batches in flight: the signal lands before the last one
  };
  ASSERT_EQ(run(args(dir_ / "clean", true)), 0) << slurp(dir_ / "stderr");
  const fs::path root = dir_ / "stopped";
  // Signal once the first whole-network batch is recorded: the grid's 20 batches are done.
  const int st = signal_after_first_record(args(root, true), root, "plans-", SIGTERM);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) GTEST_SKIP() << "the run finished before the signal";
  ASSERT_TRUE(WIFEXITED(st)) << "SIGTERM must end the run cleanly, not kill it";
  EXPECT_EQ(WEXITSTATUS(st), 143);
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    EXPECT_NE(e.path().filename(), "summary.json") << e.path() << ": nothing may look finished";
  }
  EXPECT_EQ(count_records(root, "grid-"), 20u);
  // The grid's time is kept beside its records (a study's grid_seconds covered the last
  // attempt only: about 0 once the grid was resumed whole).
  double first = 0.0;
  for (const auto& e : fs::recursive_directory_iterator(root)) {
    if (e.path().filename() == "grid_seconds.json") first = nlohmann::json::parse(slurp(e.path()))["grid_seconds"];
  }
  EXPECT_GT(first, 0.0);
  const size_t plans = count_records(root, "plans-");
  EXPECT_GE(plans, 1u);
  EXPECT_LT(plans, 20u) << "the signal should have stopped the run before its end";
  // Not a sharded run: merge says what to do instead.
  fs::path work;
  for (const auto& e : fs::directory_iterator(root / "additivity-resnet")) work = e.path();
  EXPECT_EQ(run("merge " + work.string()), 2);
  EXPECT_NE(slurp(dir_ / "stderr").find("run the same qsweep run command again to resume it"), std::string::npos)
      << slurp(dir_ / "stderr");
  // A copy whose records stand for other configurations (a qsweep that drew other subsets for
  // the same config): computed again, not resumed into other rows.
  const fs::path other = dir_ / "other";
  fs::copy(root, other, fs::copy_options::recursive);
  fs::path inputs;
  for (const auto& e : fs::recursive_directory_iterator(other)) {
    if (e.path().filename() == "inputs.json") inputs = e.path();
  }
  ASSERT_FALSE(inputs.empty());
  auto j = nlohmann::json::parse(slurp(inputs));
  ASSERT_TRUE(j.contains("plans_sha256"));
  j["plans_sha256"] = "earlier";
  std::ofstream(inputs) << j.dump();
  fs::remove(dir_ / "stderr");
  ASSERT_EQ(run(args(other, true)), 0) << slurp(dir_ / "stderr");
  EXPECT_NE(slurp(dir_ / "stderr").find("the configurations' layer subsets (qsweep changed them) changed since the "
                                        "earlier attempt: its " + std::to_string(20 + plans) +
                                        " recorded batches are computed again"),
            std::string::npos)
      << slurp(dir_ / "stderr");
  EXPECT_EQ(slurp(result(other, "additivity-resnet") / "additivity.csv"),
            slurp(result(dir_ / "clean", "additivity-resnet") / "additivity.csv"));
  fs::remove(dir_ / "stderr");
  ASSERT_EQ(run(args(root, false)), 0) << slurp(dir_ / "stderr");
  const std::string err = slurp(dir_ / "stderr");
  EXPECT_NE(err.find("resuming: 20 of 20 batches already recorded"), std::string::npos) << err;
  EXPECT_NE(err.find(fmt::format("resuming: {} of 20 batches already recorded", plans)), std::string::npos) << err;
  EXPECT_EQ(err.find("[grid]"), std::string::npos) << "no grid batch is left to compute: " << err;
  for (const char* f : {"additivity.csv", "layerwise.csv", "layers.csv"}) {
    EXPECT_EQ(slurp(result(root, "additivity-resnet") / f), slurp(result(dir_ / "clean", "additivity-resnet") / f)) << f;
  }
  const auto manifest = [&](const fs::path& r) {
    return nlohmann::json::parse(slurp(result(r, "additivity-resnet") / "manifest.json"));
  };
  EXPECT_EQ(manifest(root)["batches_from_earlier_attempts"], 20 + plans);
  EXPECT_GT(nlohmann::json::parse(slurp(result(root, "additivity-resnet") / "summary.json"))["grid_seconds"].get<double>(),
            first);
  EXPECT_EQ(manifest(dir_ / "clean")["batches_from_earlier_attempts"], 0);
  for (const auto& e : fs::directory_iterator(root / "additivity-resnet")) {
    EXPECT_NE(e.path().extension(), ".work") << "the work folder is gone once the results are in";
  }
}

TEST(CostModel, FourShardsOfTheShippedGridAreBalanced) {
  const auto models = testing::shipped_models();
  ASSERT_FALSE(models.empty());
  const Graph g = import_onnx(models[0].onnx);
  CpuBackend cpu;
  Executor exec(g, cpu);
  Tensor one(Shape{1, 1, 28, 28});
  const auto nc = node_costs(exec, one);
  std::vector<double> cells;
  for (const Layer& L : g.layers) {
    for (int b = 0; b < 6; ++b) cells.push_back(suffix_cost(exec, nc, L.index));
  }
  // Costs are real: the stem's suffix is the whole network, the classifier's almost nothing.
  EXPECT_NEAR(suffix_cost(exec, nc, 0), forward_cost(nc), 0.05 * forward_cost(nc));
  EXPECT_LT(suffix_cost(exec, nc, static_cast<int>(g.layers.size()) - 1), 0.01 * forward_cost(nc));
  const ShardPlan p = plan_shards(cells, forward_cost(nc), 40, 250, 10000, 4);
  double total = 0, worst = 0;
  for (double c : p.cost) {
    total += c;
    worst = std::max(worst, c);
  }
  EXPECT_LE(worst, kMaxShardImbalance * total / 4) << "most expensive shard vs the mean";
  // Every (cell, batch) exactly once.
  std::vector<int> seen(cells.size() * 40, 0);
  for (int s = 0; s < 4; ++s) {
    const auto by_batch = cells_by_batch(p, s);
    for (int64_t b = 0; b < 40; ++b) {
      for (int c : by_batch[b]) ++seen[c * 40 + b];
    }
  }
  for (int v : seen) ASSERT_EQ(v, 1);
}

}  // namespace
}  // namespace qsweep
