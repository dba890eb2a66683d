// Figures and report.html for a results folder, drawn from its CSV/JSON files alone.
//
// Layout written into the folder:
//   figures/<stem>.dat   the numbers behind the figure (tab-separated, header in a # line),
//                        copied verbatim from the CSV files
//   figures/<stem>.gp    the gnuplot script that draws <stem>.png and <stem>.svg from the .dat
//                        (run `gnuplot <stem>.gp` inside figures/ after editing it)
//   figures/<stem>.png, .svg
//   weights/<layer>.f32  raw float32 weights of the worst layers (when a model is at hand)
//   report.html          one self-contained page: manifest, float32 accuracy, worst layers,
//                        every figure and table, the commands to re-run and redraw
// gnuplot (Debian gnuplot-nox, cairo terminals) runs as a child process with a time limit; a
// missing or failing gnuplot is reported as one warning line, never as an error.
#pragma once

#include <atomic>
#include <filesystem>
#include <string>
#include <vector>

namespace qsweep {

struct Graph;

struct ReportOptions {
  bool plots = true;                // run gnuplot; false: data, scripts and page only
  double saturate = 5.0;            // the degradation heatmap's colour scale saturates here (points)
  int bar_bits = 0;                 // bit-width of the per-layer bars; 0: the lowest of the run
  std::string bar_bits_from = "output.bar_bits";  // where bar_bits came from, for its warning
  int worst = 0;                    // worst layers highlighted and histogrammed; 0: as summary.json lists
  std::string gnuplot = "gnuplot";  // program to run, looked up on PATH
  int gnuplot_timeout_s = 60;       // per figure
  // Where the folder lives once complete (a run writes into a staging folder that is renamed
  // afterwards): used in the page's commands and the warnings. Empty: the folder itself.
  std::filesystem::path final_dir;
  // Set (by a signal handler): no further figure is drawn.
  const std::atomic<bool>* stop = nullptr;
};

struct ReportResult {
  std::vector<std::string> figures;  // stems whose data and script were written
  std::vector<std::string> drawn;    // stems drawn as PNG and SVG
  bool gnuplot_missing = false;
  std::vector<std::string> warnings;  // one line each, for the user
};

// Reads summary.json, the tables its kind writes (layerwise.csv, additivity.csv,
// comparison.csv, layers.csv), manifest.json and weights/*.f32 from `dir` and writes figures/
// and report.html into it. `graph`: the model the folder was computed from; when given, the
// worst layers' weights are saved to weights/ (else the model named in manifest.json is
// imported when that file exists). Throws UserError when a table or summary.json is missing,
// cut short or damaged (check_results_tables()); figure problems become warnings.
ReportResult write_report(const std::filesystem::path& dir, const ReportOptions& options, const Graph* graph = nullptr);

// The checks write_report() makes of a results folder's summary.json and tables before it
// draws anything: one UserError sentence naming the file (and line) that is missing, cut
// short, unreadable or not as qsweep writes it. A finished run is served again only if it
// passes them.
void check_results_tables(const std::filesystem::path& dir);

// The options a results folder's config.toml sets (output.plots, output.saturate,
// output.bar_bits, output.worst), defaults for what it does not set. Read leniently: only
// these keys matter, so a config.toml from another qsweep version still works.
ReportOptions report_options_for(const std::filesystem::path& dir);

// Escapes &, <, >, " and ' for HTML text and attribute values.
std::string html_escape(const std::string& s);
// A word for a shell command shown to the user: as is where the shell reads it so, else in
// single quotes.
std::string shell_quote(const std::string& s);

}  // namespace qsweep
