#include "experiments/slurm.h"

#include <cstdio>
#include <sstream>
#include <optional>
#include <fmt/format.h>
#include <toml++/toml.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "experiments/config.h"
#include "experiments/results.h"
#include "runtime/error.h"
#include "runtime/sha256.h"
#include "slurm_templates.h"

namespace qsweep {

namespace fs = std::filesystem;

namespace {

// Single-quoted for bash.
std::string sh_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

std::string fill(std::string t, const std::vector<std::pair<std::string, std::string>>& vars) {
  for (const auto& [k, v] : vars) {
    const std::string key = "@" + k + "@";
    for (size_t pos = t.find(key); pos != std::string::npos; pos = t.find(key, pos + v.size())) t.replace(pos, key.size(), v);
  }
  return t;
}

std::string self_path() {
  char buf[4096];
  const ssize_t n = readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return "qsweep";
  buf[n] = 0;
  return buf;
}

// Runs sbatch --parsable; returns the job id.
std::string sbatch(const std::vector<std::string>& args) {
  std::string cmd = "sbatch --parsable";
  for (const auto& a : args) cmd += fmt::format(" {}", sh_quote(a));
  cmd += " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) user_error("cannot run sbatch");
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  const int st = pclose(p);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  if (st != 0 || out.empty()) {
    // sbatch's message may span lines ("sbatch: error: ..." several times): one line here.
    std::string said;
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
      if (line.rfind("sbatch: error: ", 0) == 0) line = line.substr(15);
      while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
      if (!line.empty()) said += (said.empty() ? "" : "; ") + line;
    }
    user_error("sbatch failed ({}): {}", WIFEXITED(st) ? WEXITSTATUS(st) : -1,
               said.empty() ? "no output; is SLURM installed and SLURM_CONF set?" : said);
  }
  const auto semi = out.find(';');  // "jobid;cluster"
  return semi == std::string::npos ? out : out.substr(0, semi);
}

// A --set of a file path (model.path, data.path) made absolute: qsweep run reads such a --set
// against its working folder, which a batch job's need not be (sbatch --chdir).
std::string absolute_set(const std::string& o) {
  const auto kv = split_set(o);
  if (!kv) return o;
  const std::string& key = kv->first;
  if (key != "model.path" && key != "data.path") return o;
  std::optional<std::string> v;
  try {
    v = toml::parse("v = " + kv->second)["v"].value<std::string>();
  } catch (const toml::parse_error&) {
    return o;  // qsweep run names it
  }
  if (!v || v->empty() || fs::path(*v).is_absolute()) return o;
  std::string q = "\"";
  for (const char c : fs::absolute(*v).lexically_normal().string()) {
    if (c == '"' || c == '\\') q += '\\';
    q += c;
  }
  return key + "=" + q + "\"";
}

// A run id's existing work folder that the array would not fit: another configuration's, or
// the grid split another number of ways. Every task would fail, and the merge never run.
void check_existing_work(const fs::path& work, const Config& cfg, int array) {
  std::error_code ec;
  if (!fs::is_directory(work, ec)) return;
  if (fs::exists(work / "config.toml") &&
      config_identity_of_file((work / "config.toml").string(), cfg.batch_size == 0) !=
          config_identity(cfg, cfg.batch_size == 0)) {
    user_error("'{}' belongs to a run with another configuration (compare its config.toml); use another --run-id",
               work.string());
  }
  for (const auto& e : fs::directory_iterator(work, ec)) {
    if (const int n = used_shard_split(e); n != 0 && n != array) {
      user_error("'{}' holds the grid {}; --array {} would have it {}: use --array {}, or another --run-id",
                 work.string(), split_text(n), array, split_text(array), n);
    }
  }
}

}  // namespace

SubmitOutcome submit_run(const SubmitOptions& o) {
  if (o.array < 1) user_error("--array {}: the number of array tasks (shards) must be at least 1", o.array);
  std::vector<std::string> overrides = o.overrides;
  const fs::path root = fs::absolute(o.out_root.empty() ? load_config(o.config_path, overrides).root : o.out_root);
  overrides.push_back(fmt::format("output.root=\"{}\"", root.string()));
  const Config cfg = load_config(o.config_path, overrides);
  if (cfg.kind != "layerwise") user_error("qsweep submit shards layer-wise grids; '{}' has kind = \"{}\"", o.config_path, cfg.kind);
  // What every array task would refuse, refused here before anything is written or submitted.
  if (cfg.naive && o.array > 1) {
    user_error("run.naive cannot be sharded; the naive way is for comparisons on one machine (use --array 1, or "
               "qsweep run)");
  }
  // A login node may not see the compute nodes' mounts: a note, not a refusal.
  if (!fs::is_regular_file(cfg.model_path)) {
    eprint("qsweep: note: model.path '{}' is not a file here; the array tasks fail unless the compute nodes see "
           "it\n",
           cfg.model_path);
  }
  std::string run_id = o.run_id;
  if (run_id.empty()) {
    const std::string text = config_identity(cfg);  // as qsweep run names it
    run_id = "cfg-" + sha256_hex(text.data(), text.size()).substr(0, 12);
  }
  // The rules of qsweep run's --run-id, checked before anything is written or submitted.
  if (!is_folder_name(run_id) || run_id.size() > 180) {
    user_error("--run-id {}: a run id is a name of at most 180 characters without slashes or control characters that "
               "does not start with '.'",
               run_id.size() > 40 ? run_id.substr(0, 20) + "..." : run_id);
  }
  SubmitOutcome out;
  out.run_dir = root / cfg.name / run_id;
  const fs::path work = root / cfg.name / ("." + run_id + ".work");
  check_existing_work(work, cfg, o.array);
  const fs::path slurm = work / "slurm";
  std::error_code ec;
  fs::create_directories(slurm, ec);
  if (ec) user_error("cannot create '{}': {}", slurm.string(), ec.message());

  std::string sets;
  for (const auto& s : o.overrides) sets += fmt::format("{}--set {}", sets.empty() ? "" : " ", sh_quote(absolute_set(s)));
  std::string sbatch_args;
  for (const auto& a : o.sbatch_args) sbatch_args += (sbatch_args.empty() ? "" : " ") + a;
  const std::vector<std::pair<std::string, std::string>> vars = {
      {"NAME", cfg.name},
      {"ARRAY_MAX", std::to_string(o.array - 1)},
      {"LOG_DIR", slurm.string()},
      {"QSWEEP", sh_quote(self_path())},
      {"CONFIG", sh_quote(fs::absolute(o.config_path).string())},
      {"RUN_ID", sh_quote(run_id)},
      {"OUT", sh_quote(root.string())},
      {"SETS", sets},
      {"RUN_DIR", sh_quote(out.run_dir.string())},
      {"SBATCH_ARGS", sbatch_args.empty() ? "(none)" : sbatch_args},
  };
  out.array_script = slurm / "array.sbatch";
  out.merge_script = slurm / "merge.sbatch";
  write_file_atomic(out.array_script, fill(kArraySbatchTemplate, vars));
  write_file_atomic(out.merge_script, fill(kMergeSbatchTemplate, vars));
  chmod(out.array_script.c_str(), 0755);
  chmod(out.merge_script.c_str(), 0755);
  if (o.dry_run) return out;

  std::vector<std::string> a = o.sbatch_args;
  a.push_back(out.array_script.string());
  out.array_job = sbatch(a);
  std::vector<std::string> m = o.sbatch_args;
  m.push_back("--dependency=afterok:" + out.array_job);
  m.push_back(out.merge_script.string());
  out.merge_job = sbatch(m);
  if (!o.quiet) {
    fmt::print("submitted array job {} ({} shards) and merge job {} (afterok)\nresults will be in {}\n", out.array_job,
               o.array, out.merge_job, out.run_dir.string());
  }
  return out;
}

}  // namespace qsweep
