// The one loop every experiment runs: the evaluation (or calibration) images in batches,
// each batch decoded and processed by one thread with its own workspace (OpenMP across
// batches, oneDNN single-threaded inside), so results never depend on the thread count.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <optional>
#include <span>
#include <vector>

#include <omp.h>

#include "runtime/data.h"
#include "runtime/device_session.h"
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
  // An exception may not leave an OpenMP region: the first one (a corrupt image file, say) is
  // kept, the remaining batches are skipped, and it is rethrown after the region.
  std::exception_ptr failure;
  std::atomic<bool> failed{false};
#pragma omp parallel num_threads(threads)
  {
    // oneDNN sizes a primitive's work split by the thread count it sees when it creates it
    // (omp_get_max_threads), though inside this region it runs on one thread: pin it to 1.
    omp_set_num_threads(1);
    auto fail = [&] {
#pragma omp critical(qsweep_batch_failure)
      if (!failure) failure = std::current_exception();
      failed.store(true);
    };
    std::optional<Executor::Workspace> ws;
    try {
      ws.emplace(exec.make_workspace());
    } catch (...) {
      fail();
    }
    Tensor x;
#pragma omp for schedule(dynamic, 1)
    for (int64_t j = 0; j < jobs; ++j) {  // every thread reaches the loop, failed or not
      if (failed.load()) continue;
      try {
        const int64_t i = only ? (*only)[j] : j;
        const int64_t begin = i * batch_size, n = std::min(batch_size, count - begin);
        load_batch(data, norm, begin, n, x);
        f(*ws, x, i, begin, n);
      } catch (...) {
        fail();
      }
    }
  }
  if (failure) std::rethrow_exception(failure);
}

// The device-resident loop (a backend with a DeviceSession): for each batch listed in
// `todo`, in order, the float32 forward and jobs_of(batch)'s jobs run on the device while
// the host decodes and stages the next batch; done(batch, begin, n, outcome) receives each
// outcome. Stops early (returns false) when *stop becomes true.
template <typename JobsOf, typename Done>
bool for_each_device_batch(DeviceSession& session, const Dataset& data, const Normalization& norm, int64_t count,
                           int64_t batch_size, const std::vector<int64_t>& todo, JobsOf&& jobs_of, bool materialize,
                           Done&& done, const std::atomic<bool>* stop = nullptr) {
  count = std::min(count, data.count);
  Tensor x;
  auto stage = [&](int64_t i) {
    const int64_t begin = i * batch_size, n = std::min(batch_size, count - begin);
    load_batch(data, norm, begin, n, x);
    session.stage(x, data.labels.data() + begin, n);
  };
  if (todo.empty()) return true;
  stage(todo[0]);
  DeviceOutcome out;
  for (size_t j = 0; j < todo.size(); ++j) {
    const int64_t i = todo[j], begin = i * batch_size, n = std::min(batch_size, count - begin);
    const std::span<const DeviceJob> jobs = jobs_of(i);
    session.launch(jobs, materialize);
    const bool stopping = stop && stop->load();
    if (j + 1 < todo.size() && !stopping) stage(todo[j + 1]);  // overlaps the device's work
    session.collect(out);
    done(i, begin, n, out);
    if (stopping) return j + 1 == todo.size();
  }
  return true;
}

// Every batch index of the first `count` images.
inline std::vector<int64_t> all_batches(int64_t count, int64_t batch_size) {
  std::vector<int64_t> v((count + batch_size - 1) / batch_size);
  for (size_t i = 0; i < v.size(); ++i) v[i] = static_cast<int64_t>(i);
  return v;
}

}  // namespace qsweep
