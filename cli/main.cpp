// qsweep: batch experiment runner for layer-wise quantization analysis.
#include <atomic>
#include <cmath>
#include <cerrno>
#include <csignal>
#include <system_error>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <sys/stat.h>
#include <time.h>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "experiments/check.h"
#include "experiments/config.h"
#include "experiments/report.h"
#include "experiments/results.h"
#include "experiments/run.h"
#include "experiments/slurm.h"
#include "qsweep_version.h"
#include "runtime/error.h"
#include "runtime/onnx_import.h"

namespace {

std::string join_args(int argc, char** argv) {
  std::string s;
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.find_first_of(" \"'$") != std::string::npos) a = "'" + a + "'";
    s += (i ? " " : "") + a;
  }
  return s;
}

int list_layers(const std::string& model) {
  const qsweep::Graph g = qsweep::import_onnx(model);
  fmt::print("{} layers in {} (opset {}, {} nodes after BatchNormalization folding)\n", g.layers.size(), model, g.opset,
             g.nodes.size());
  fmt::print("{:>5}  {:<40} {:<7} {:<12} {}\n", "index", "name", "op", "activation", "weight shape");
  for (const auto& L : g.layers) {
    fmt::print("{:>5}  {:<40} {:<7} {:<12} {}\n", L.index, qsweep::printable(L.name), qsweep::op_name(g.nodes[L.node].op),
               L.act_node >= 0 ? std::string(qsweep::op_name(g.nodes[L.act_node].op)) : "-",
               qsweep::shape_str(g.constant(L.weight_value).shape));
  }
  return 0;
}

// Compares `dir` with `baseline`, prints the report (and writes it as JSON when asked) and
// returns the exit status: 0 when every number is within tolerance, kCheckMovedExit if not.
struct CheckReports {
  std::string json, junit;  // files to write, or ""
};

// An absolute path for a report file whose folder exists and which is no folder itself
// (checked before any work is done).
std::filesystem::path report_path(const char* option, const std::string& file) {
  std::error_code ec;
  const std::filesystem::path p = std::filesystem::absolute(file, ec);
  if (ec || !std::filesystem::is_directory(p.parent_path(), ec)) {
    qsweep::user_error("{} {}: its folder does not exist", option, file);
  }
  if (std::filesystem::is_directory(p, ec)) qsweep::user_error("{} {}: is a folder; give a file name", option, file);
  return p;
}

// Writes a report file. The process's own stdout or stderr (--json /dev/stdout, also when
// redirected to a file) gets it through that stream; a symbolic link is written through (its
// file, created if missing, keeps its mode, owner and links); a FIFO or a device is appended
// to; only a regular or new file is replaced atomically.
void write_report(const char* option, const std::string& file, const std::string& content) {
  namespace fs = std::filesystem;
  const fs::path p = report_path(option, file);
  struct stat target {};
  if (::stat(p.c_str(), &target) == 0) {
    for (FILE* stream : {stdout, stderr}) {
      struct stat s {};
      if (::fstat(fileno(stream), &s) == 0 && s.st_dev == target.st_dev && s.st_ino == target.st_ino) {
        const bool ok = std::fflush(stream) == 0 &&
                        std::fwrite(content.data(), 1, content.size(), stream) == content.size() &&
                        std::fflush(stream) == 0;
        if (!ok) qsweep::user_error("{} {}: cannot be written ({})", option, file, std::strerror(errno));
        return;
      }
    }
  }
  std::error_code ec;
  const bool link = fs::is_symlink(fs::symlink_status(p, ec));
  const fs::file_status st = fs::status(p, ec);
  if (link || (fs::exists(st) && !fs::is_regular_file(st))) {
    const bool in_place = link && (!fs::exists(st) || fs::is_regular_file(st));
    std::ofstream out(p, std::ios::binary | (in_place ? std::ios::trunc : std::ios::app));
    out << content;
    out.flush();
    if (!out) qsweep::user_error("{} {}: cannot be written", option, file);
    return;
  }
  qsweep::write_file_atomic(p, content);
}

int check(const std::string& dir, const std::string& baseline, const qsweep::CheckOptions& o,
          const CheckReports& reports, bool quiet) {
  const qsweep::CheckResult r = qsweep::check_results(dir, baseline, o);
  if (!reports.json.empty()) write_report("--json", reports.json, qsweep::check_json(r, o).dump(2) + "\n");
  if (!reports.junit.empty()) write_report("--junit", reports.junit, qsweep::check_junit(r, o));
  if (!quiet || !r.passed()) fmt::print("{}", qsweep::format_check(r, o));
  if (r.passed()) return 0;
  std::fflush(stdout);
  qsweep::eprint("qsweep: check failed against {}: {}\n", baseline, r.verdict(o));
  return qsweep::kCheckMovedExit;
}

// CLI11's NonNegativeNumber says "Value -1 not in range 0.000000 to 17976931348623157...".
CLI::Validator non_negative() {
  return CLI::Validator(
      [](std::string& v) -> std::string {
        try {
          size_t used = 0;
          const double d = std::stod(v, &used);
          if (used == v.size() && d >= 0.0) return "";
        } catch (const std::exception&) {
        }
        return "is '" + v + "'; it must be a number, 0 or more";
      },
      "NUMBER>=0");
}

void add_check_options(CLI::App* cmd, qsweep::CheckOptions& o, CheckReports& reports) {
  cmd->add_option("--top1-tol", o.top1_tol, "Points of top-1 a row may move (default 0: the same number of correct "
                                            "images)")
      ->check(non_negative());
  cmd->add_option("--top5-tol", o.top5_tol, "Points of top-5 a row may move (default 0)")
      ->check(non_negative());
  cmd->add_option("--noise-rtol", o.noise_rtol, "Relative change of noise allowed (default 1e-6)")
      ->check(non_negative());
  cmd->add_option("--json", reports.json, "Also write the comparison, every moved row included, as JSON to this file");
  cmd->add_option("--junit", reports.junit, "Also write it as a JUnit XML report (one test case per row) to this file");
  cmd->add_option("--show", o.show, "Moved rows printed at most (default 20)")->check(non_negative());
}

void install_signal_handlers();

int report(const std::string& dir, double saturate, int bar_bits, bool saturate_given, bool bar_bits_given) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) {
    qsweep::user_error("results folder '{}' {}", dir,
                       std::filesystem::exists(dir, ec) ? "is not a folder" : "does not exist");
  }
  if (saturate_given && !(saturate > 0.0 && std::isfinite(saturate))) {
    qsweep::user_error("--saturate {}: must be a positive number of points", saturate);
  }
  if (bar_bits_given && (bar_bits < 2 || bar_bits > 16)) {
    qsweep::user_error("--bar-bits {}: must be a weight bit-width, 2 to 16", bar_bits);
  }
  qsweep::ReportOptions o = qsweep::report_options_for(dir);
  o.plots = true;  // asked for by name, whatever output.plots says
  if (saturate > 0.0) o.saturate = saturate;
  if (bar_bits > 0) {
    o.bar_bits = bar_bits;
    o.bar_bits_from = "--bar-bits";
  }
  install_signal_handlers();  // a stop ends the drawing between two figures, with a word
  o.stop = &qsweep::stop_requested();
  const qsweep::ReportResult r = qsweep::write_report(dir, o);
  if (qsweep::stop_requested()) {
    throw qsweep::RunInterrupted(fmt::format("interrupted while the figures were drawn; the tables and report.html are "
                                             "untouched, a figure being drawn may be missing: run qsweep report {} "
                                             "again to draw them all",
                                             qsweep::shell_quote(dir)));
  }
  for (const auto& w : r.warnings) qsweep::eprint("qsweep: warning: {}\n", w);
  fmt::print("{} of {} figures drawn; report: {}\n", r.drawn.size(), r.figures.size(),
             (std::filesystem::path(dir) / "report.html").string());
  return 0;
}

// SIGTERM (what SLURM sends before killing) and SIGINT: finish the batches in flight, keep
// what is recorded, exit 143. A second signal ends the process at once, unless it comes within
// half a second of the first: `timeout` (and some schedulers) send the same stop to the
// process and to its process group.
std::atomic<int64_t> first_stop_ns{0};

extern "C" void on_stop_signal(int sig) {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);  // async-signal-safe
  const int64_t now = static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
  int64_t unset = 0;
  first_stop_ns.compare_exchange_strong(unset, now);
  if (qsweep::stop_requested().exchange(true) && now - first_stop_ns.load() >= 500000000) {
    std::signal(sig, SIG_DFL);
    std::raise(sig);
  }
}

// SIGHUP (a closed terminal or SSH session) stops a run as SIGTERM does, unless it is ignored
// (nohup): then the run goes on after the logout, as nohup asks.
void install_signal_handlers() {
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGINT, on_stop_signal);
  struct sigaction hup {};
  if (sigaction(SIGHUP, nullptr, &hup) == 0 && hup.sa_handler != SIG_IGN) std::signal(SIGHUP, on_stop_signal);
}

}  // namespace

int main(int argc, char** argv) {
  // A reader gone (`qsweep run ... | head`) makes writes fail with EPIPE, reported as an error,
  // instead of killing the process without a word.
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"qsweep: layer-wise quantization analysis of ONNX networks"};
  app.set_version_flag("--version", std::string("qsweep ") + QSWEEP_VERSION + " (" + QSWEEP_GIT_COMMIT + ")");
  app.require_subcommand(1);

  qsweep::RunOptions run;
  auto* run_cmd = app.add_subcommand("run", "Run the experiment a TOML config describes and write a results folder");
  run_cmd->add_option("config", run.config_path, "TOML config (see configs/README.md)")->required();
  run_cmd->add_option("--set", run.overrides, "Override a config key: KEY=VALUE, VALUE in TOML syntax "
                                              "(--set quant.act_bits=6, --set 'model.path=\"m.onnx\"')")
      ->type_name("KEY=VALUE");
  run_cmd->add_option("--out", run.out_root, "Results root folder (overrides output.root)");
  run_cmd->add_option("--backend", run.backend, "cpu, cuda or auto (overrides run.backend)");
  run_cmd->add_flag("--naive", run.naive, "Run the grid the slow way (full forward per cell), for comparison");
  run_cmd->add_flag("--quiet,-q", run.quiet, "No progress or summary output");
  run_cmd->add_option("--shard", run.shard, "Compute shard I of N of a layer-wise grid (default inside a SLURM array "
                                            "task: from SLURM_ARRAY_TASK_ID/COUNT); merge with `qsweep merge`")
      ->type_name("I/N");
  run_cmd->add_option("--run-id", run.run_id, "Name of the run folder (default: the SLURM array job, else a hash "
                                              "of the config as run, so shards and restarts find it)");
  run_cmd->add_flag("--fresh", run.fresh, "Start a new run instead of resuming or reusing a finished one");
  std::string run_check;
  qsweep::CheckOptions run_check_options;
  CheckReports run_check_reports;
  run_cmd->add_option("--check", run_check, "After the run, compare its results with this baseline results folder "
                                            "as `qsweep check` does; exit 3 when a number moved");
  add_check_options(run_cmd, run_check_options, run_check_reports);

  std::string merge_dir;
  bool merge_quiet = false;
  auto* merge_cmd = app.add_subcommand("merge", "Merge the shards of a run into its results folder");
  merge_cmd->add_option("run_dir", merge_dir, "The run's results folder, <output.root>/<name>/<run-id>")->required();
  merge_cmd->add_flag("--quiet,-q", merge_quiet, "No summary output");

  qsweep::SubmitOptions submit;
  auto* submit_cmd = app.add_subcommand("submit", "Submit a layer-wise grid as a SLURM job array plus a merge job; "
                                                  "options qsweep does not know are passed to sbatch");
  submit_cmd->add_option("config", submit.config_path, "TOML config")->required();
  submit_cmd->add_option("--array", submit.array, "Number of array tasks (shards)")->required();
  submit_cmd->add_option("--set", submit.overrides, "Override a config key (as for run)")->type_name("KEY=VALUE");
  submit_cmd->add_option("--out", submit.out_root, "Results root folder (overrides output.root)");
  submit_cmd->add_option("--run-id", submit.run_id, "Name of the run folder (default: a hash of the config as run)");
  submit_cmd->add_flag("--dry-run", submit.dry_run, "Write the sbatch scripts and print their paths; submit nothing");
  submit_cmd->allow_extras();

  std::string model;
  auto* layers_cmd = app.add_subcommand("layers", "List the layers qsweep finds in an ONNX model");
  layers_cmd->add_option("model", model, "ONNX file")->required();

  auto* keys_cmd = app.add_subcommand("keys", "Print every config key with its default (Markdown)");

  std::string report_dir;
  double report_saturate = 0.0;
  int report_bar_bits = 0;
  auto* report_cmd = app.add_subcommand("report", "(Re)draw the figures and report.html of a results folder from its "
                                                  "CSV/JSON files alone");
  report_cmd->add_option("dir", report_dir, "Results folder (holds layerwise.csv)")->required();
  report_cmd->add_option("--saturate", report_saturate, "Degradation (points) at which the heatmap's colour scale "
                                                        "saturates (default: output.saturate in DIR/config.toml)");
  report_cmd->add_option("--bar-bits", report_bar_bits, "Weight bit-width of the per-layer bars (default: "
                                                        "output.bar_bits in DIR/config.toml, else the lowest)");

  std::string check_dir, check_baseline;
  CheckReports check_reports;
  qsweep::CheckOptions check_options;
  bool check_quiet = false;
  auto* check_cmd = app.add_subcommand("check", "Compare a results folder with a baseline results folder; exit 3 "
                                                "when a number moved beyond tolerance (regression sweeps)");
  check_cmd->add_option("dir", check_dir, "Results folder to check")->required();
  check_cmd->add_option("baseline", check_baseline, "Baseline results folder (a copy of an earlier run's folder; "
                                                    "its CSV and JSON files are enough)")
      ->required();
  add_check_options(check_cmd, check_options, check_reports);
  check_cmd->add_flag("--quiet,-q", check_quiet, "Print nothing when every number is within tolerance");

  // Usage errors as every other error: one sentence, exit 2 (CLI11 would print two lines and
  // exit 104-114). --help and --version print and exit 0 as CLI11 does.
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::string what = e.what();
    if (argc > 1 && argv[1][0] != '-' && app.get_subcommands().empty()) {
      what = fmt::format("unknown command '{}'", argv[1]);
    } else if (argc <= 1 || app.get_subcommands().empty()) {
      what = "a command is required";
    }
    qsweep::eprint("qsweep: error: {}; {}\n", what,
                   app.get_subcommands().empty()
                   ? "the commands are run, merge, submit, check, report, layers and keys (qsweep --help)"
                   : fmt::format("see qsweep {} --help", app.get_subcommands()[0]->get_name()));
    return 2;
  }
  run.command_line = join_args(argc, argv);
  try {
    if (*run_cmd) {
      if (run_cmd->count("--shard") > 0 && run.shard.empty()) {
        qsweep::user_error("--shard '': expected I/N with 0 <= I < N, e.g. --shard 2/8");
      }
      // An empty value is not "unset": it would be ignored in silence.
      for (const auto& [flag, value] : {std::pair<const char*, const std::string*>{"--out", &run.out_root},
                                        {"--backend", &run.backend}, {"--run-id", &run.run_id}}) {
        if (run_cmd->count(flag) > 0 && value->empty()) {
          qsweep::user_error("{} '': give a value ({})", flag,
                             std::string(flag) == "--out"       ? "a results root folder"
                             : std::string(flag) == "--backend" ? "cpu, cuda or auto"
                                                                : "a run folder name");
        }
      }
      if (run_check.empty() && (!run_check_reports.json.empty() || !run_check_reports.junit.empty())) {
        qsweep::user_error("--json and --junit report the comparison --check BASELINE makes; add --check");
      }
      const char* array_tasks = std::getenv("SLURM_ARRAY_TASK_COUNT");
      const bool array_task = std::getenv("SLURM_ARRAY_TASK_ID") && array_tasks && std::atoi(array_tasks) > 1;
      if (!run_check.empty() && (!run.shard.empty() || array_task)) {
        qsweep::user_error("--check compares a whole run; check the merged folder after `qsweep merge` instead of "
                           "one shard");
      }
      if (std::error_code ec; !run_check.empty() && !std::filesystem::is_directory(run_check, ec)) {
        qsweep::user_error("--check {}: the baseline folder does not exist", run_check);  // before a long run
      }
      if (!run_check_reports.json.empty()) report_path("--json", run_check_reports.json);
      if (!run_check_reports.junit.empty()) report_path("--junit", run_check_reports.junit);
      install_signal_handlers();
      const qsweep::RunOutcome out = qsweep::run_experiment(run);
      if (out.interrupted) return 143;
      if (!run_check.empty()) return check(out.folder.string(), run_check, run_check_options, run_check_reports, run.quiet);
    } else if (*merge_cmd) {
      install_signal_handlers();  // a stop while hashing or drawing: nothing moved into place, exit 143
      qsweep::merge_run(merge_dir, merge_quiet);
    } else if (*submit_cmd) {
      submit.sbatch_args = submit_cmd->remaining();
      const auto r = qsweep::submit_run(submit);
      if (submit.dry_run) fmt::print("{}\n{}\n", r.array_script.string(), r.merge_script.string());
    } else if (*layers_cmd) {
      return list_layers(model);
    } else if (*keys_cmd) {
      fmt::print("{}", qsweep::config_keys_markdown());
    } else if (*report_cmd) {
      return report(report_dir, report_saturate, report_bar_bits, report_cmd->count("--saturate") > 0,
                    report_cmd->count("--bar-bits") > 0);
    } else if (*check_cmd) {
      return check(check_dir, check_baseline, check_options, check_reports, check_quiet);
    }
  } catch (const qsweep::RunInterrupted& e) {
    qsweep::eprint("qsweep: {}\n", e.what());
    return 143;
  } catch (const qsweep::UserError& e) {
    qsweep::eprint("qsweep: error: {}\n", e.what());
    return 2;
  } catch (const std::system_error& e) {
    // The reader of the output went away (`qsweep layers m.onnx | head`): quietly, with the
    // status a death by SIGPIPE has (a run keeps its records and resumes).
    if (e.code() == std::errc::broken_pipe) return 141;
    // The system refused (a path not readable, a stdout that cannot be written): not a bug.
    qsweep::eprint("qsweep: error: {}\n", qsweep::printable(e.what()));
    return 2;
  } catch (const std::exception& e) {
    qsweep::eprint("qsweep: internal error: {}\n", e.what());
    return 1;
  }
  return 0;
}
