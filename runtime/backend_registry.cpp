#include "runtime/backend.h"
#include "runtime/cpu_backend.h"
#include "runtime/error.h"

namespace qsweep {

std::unique_ptr<Backend> make_backend(const std::string& name, int /*device*/) {
  if (name == "cpu" || name == "auto") return std::make_unique<CpuBackend>();
  if (name == "cuda") {
#ifdef QSWEEP_WITH_CUDA
    user_error("run.backend = \"cuda\": this build has CUDA kernels but the CUDA backend is not "
               "implemented yet; use \"cpu\" or \"auto\"");
#else
    user_error("run.backend = \"cuda\": this qsweep was built without CUDA (no nvcc found, or "
               "-DQSWEEP_CUDA=OFF); use \"cpu\" or \"auto\"");
#endif
  }
  user_error("run.backend = \"{}\" is not a backend; accepted: \"cpu\", \"cuda\", \"auto\"", name);
}

}  // namespace qsweep
