// The one loop every experiment runs: the evaluation (or calibration) images in batches,
// each batch decoded and processed by one thread with its own workspace (OpenMP across
// batches, oneDNN single-threaded inside), so results never depend on the thread count.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include <omp.h>

#include "runtime/data.h"
#include "runtime/executor.h"

namespace qsweep {

// Calls f(ws, x, batch, begin, n) for every batch of `batch_size` images among the first
// `count` of `data` (or only for the batches listed in `only`), x holding the decoded batch.
template <typename F>
void for_each_batch(const Executor& exec, const Dataset& data, const Normalization& norm, int64_t count,
                    int64_t batch_size, int threads, F&& f, const std::vector<int64_t>* only = nullptr) {
  count = std::min(count, data.count);
  const int64_t batches = (count + batch_size - 1) / batch_size;
  const int64_t jobs = only ? static_cast<int64_t>(only->size()) : batches;
#pragma omp parallel num_threads(threads)
  {
    auto ws = exec.make_workspace();
    Tensor x;
#pragma omp for schedule(dynamic, 1)
    for (int64_t j = 0; j < jobs; ++j) {
      const int64_t i = only ? (*only)[j] : j;
      const int64_t begin = i * batch_size, n = std::min(batch_size, count - begin);
      load_batch(data, norm, begin, n, x);
      f(ws, x, i, begin, n);
    }
  }
}

}  // namespace qsweep
