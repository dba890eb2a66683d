// One forward of a graph on the CPU backend, for the import tests.
#pragma once

#include "runtime/cpu_backend.h"
#include "runtime/executor.h"

namespace qsweep::test {

inline Tensor run_graph(const Graph& g, const Tensor& x) {
  CpuBackend backend;
  Executor ex(g, backend);
  auto ws = ex.make_workspace();
  return ex.forward(ws, x);
}

}  // namespace qsweep::test
