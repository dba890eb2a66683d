#include "experiments/progress.h"

#include <algorithm>
#include <cstdio>

#include <fmt/format.h>
#include <unistd.h>

namespace qsweep {

std::string format_duration(double s) {
  if (s < 0 || s != s) return "?";
  const int64_t t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}:{:02}:{:02}", t / 3600, (t / 60) % 60, t % 60);
  return fmt::format("{}:{:02}", t / 60, t % 60);
}

Progress::Progress(std::string label, int64_t total_images, int64_t cells, bool enabled, std::string noun)
    : label_(std::move(label)),
      noun_(std::move(noun)),
      total_(total_images),
      cells_(std::max<int64_t>(cells, 1)),
      enabled_(enabled),
      tty_(isatty(2) != 0) {
  start_ = last_ = std::chrono::steady_clock::now();
}

Progress::~Progress() { finish(); }

void Progress::add_images(int64_t n) {
  done_ += n * cells_;
  tick();
}

void Progress::add_image_cells(int64_t n) {
  done_ += n;
  tick();
}

void Progress::tick() {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  std::unique_lock lock(mu_, std::try_to_lock);
  if (!lock.owns_lock()) return;
  const double since = std::chrono::duration<double>(now - last_).count();
  if (since >= (tty_ ? 0.5 : 10.0)) {
    last_ = now;
    print(false);
  }
}

void Progress::print(bool final) {
  const int64_t pairs = done_.load();
  const int64_t done = pairs / cells_;  // whole images' worth
  const double el = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double ips = el > 0 ? static_cast<double>(pairs) / cells_ / el : 0.0;
  const double eta = ips > 0 ? (total_ - static_cast<double>(pairs) / cells_) / ips : -1.0;
  const std::string line = fmt::format(
      "[{}] {:5.1f}% | images {}/{} | {} {} | {:.0f} img/s | {:.0f} img*{}/s | {} {}", label_,
      total_ ? 100.0 * pairs / (static_cast<double>(total_) * cells_) : 100.0, done, total_, cells_, noun_, ips,
      ips * cells_, noun_, final ? "took" : "ETA", format_duration(final ? el : eta));
  if (tty_) {
    std::fprintf(stderr, "\r%s\033[K%s", line.c_str(), final ? "\n" : "");
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

void Progress::finish() {
  std::lock_guard lock(mu_);
  if (finished_) return;
  finished_ = true;
  if (enabled_ && total_ > 0) print(true);  // nothing to do (a resumed run): no line
}

}  // namespace qsweep
