// Weights rearranged or transformed for a convolution kernel, kept between calls.
//
// A grid runs the same weight tensors again and again (every later layer's float32 weights in
// every suffix, each cell's quantized ones on every batch). An entry is found by the weights'
// address and shape and checked against a copy of their values, so a buffer refilled with new
// values (same address) is prepared again. The least recently used entry goes when the cache
// is full. One cache per thread (it lives in the kernels' per-thread scratch).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace qsweep {

class WeightCache {
 public:
  // The prepared form of w (n floats, shape tag `shape`), made by prepare(w, out) when it is
  // not kept. `out` arrives empty or holding an older tensor's form; prepare sizes it.
  template <typename Prepare>
  const std::vector<float>& get(const float* w, size_t n, int64_t shape, Prepare&& prepare) {
    ++clock_;
    for (Entry& e : entries_) {
      if (e.w == w && e.shape == shape && e.raw.size() == n &&
          std::memcmp(e.raw.data(), w, n * sizeof(float)) == 0) {
        e.used = clock_;
        return e.prepared;
      }
    }
    Entry* slot = nullptr;
    for (Entry& e : entries_) {
      if (e.w == w) slot = &e;  // the same buffer with new values (or a new shape)
    }
    if (slot == nullptr && entries_.size() < kMaxEntries) slot = &entries_.emplace_back();
    if (slot == nullptr) {
      slot = &*std::min_element(entries_.begin(), entries_.end(),
                                [](const Entry& a, const Entry& b) { return a.used < b.used; });
    }
    slot->w = w;
    slot->shape = shape;
    slot->raw.assign(w, w + n);
    prepare(w, slot->prepared);
    slot->used = clock_;
    return slot->prepared;
  }

 private:
  static constexpr size_t kMaxEntries = 64;
  struct Entry {
    const float* w = nullptr;
    int64_t shape = 0;
    std::vector<float> raw, prepared;
    uint64_t used = 0;
  };
  std::vector<Entry> entries_;
  uint64_t clock_ = 0;
};

}  // namespace qsweep
