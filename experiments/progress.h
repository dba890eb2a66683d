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
  // total_images: images to process; cells: configurations evaluated per image, named `noun`
  // ("cells" of a grid, "configs" of whole-network configurations).
  Progress(std::string label, int64_t total_images, int64_t cells, bool enabled, std::string noun = "cells");
  ~Progress();
  void add_images(int64_t n);  // n images, each through every cell; any thread
  void add_image_cells(int64_t n);  // n (image, cell) pairs, as the naive way goes; any thread
  void finish();

 private:
  void print(bool final);
  void tick();
  std::string label_, noun_;
  int64_t total_, cells_;
  bool enabled_, tty_;
  std::atomic<int64_t> done_{0};  // (image, cell) pairs
  std::mutex mu_;
  std::chrono::steady_clock::time_point start_, last_;
  bool finished_ = false;
};

std::string format_duration(double seconds);

}  // namespace qsweep
