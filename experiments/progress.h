// Progress on stderr for long runs: work done, images/s, ETA. Thread-safe; quiet when
// disabled. On a terminal it redraws one line; otherwise it prints a line every 10 s. With no
// images to process (everything recorded by an earlier attempt) it prints nothing.
#pragma once

#include <atomic>
#include <chrono>
#include <mutex>
#include <string>

namespace qsweep {

class Progress {
 public:
  // total_images: images to process; cells: configurations evaluated per image.
  Progress(std::string label, int64_t total_images, int64_t cells, bool enabled);
  ~Progress();
  void add_images(int64_t n);  // any thread
  void finish();

 private:
  void print(bool final);
  std::string label_;
  int64_t total_, cells_;
  bool enabled_, tty_;
  std::atomic<int64_t> done_{0};
  std::mutex mu_;
  std::chrono::steady_clock::time_point start_, last_;
  bool finished_ = false;
};

std::string format_duration(double seconds);

}  // namespace qsweep
