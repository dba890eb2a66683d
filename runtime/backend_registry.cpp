#include "runtime/backend.h"
#include "runtime/cpu_backend.h"
#include "runtime/device_session.h"
#include "runtime/error.h"

#include <stdexcept>

#include <fmt/format.h>

#ifdef QSWEEP_WITH_CUDA_BACKEND
#include "runtime/cuda_backend.h"
#endif

namespace qsweep {

std::unique_ptr<DeviceSession> Backend::make_session(const Graph&) const { return nullptr; }

void Backend::run_with_activation(BackendContext&, const Node& node, const Node& act, std::span<const Tensor* const>,
                                  Tensor&) const {
  throw std::logic_error(fmt::format("the {} backend cannot fuse node '{}' with '{}'", name(), node.name, act.name));
}

void Backend::run_conv_residual(BackendContext&, const Node& conv, const Node& add, const Node&,
                                std::span<const Tensor* const>, const Tensor&, Tensor&) const {
  throw std::logic_error(fmt::format("the {} backend cannot fuse node '{}' with '{}'", name(), conv.name, add.name));
}

bool cuda_device_available() {
#ifdef QSWEEP_WITH_CUDA_BACKEND
  return cuda_device_count() > 0;
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& name, int device) {
  BackendOptions o;
  o.device = device;
  return make_backend(name, o);
}

std::unique_ptr<Backend> make_backend(const std::string& name, const BackendOptions& options) {
  if (name == "cpu") return std::make_unique<CpuBackend>(options.transform_convs);
  if (name == "auto") {
    if (cuda_device_available()) return make_backend("cuda", options);
    return std::make_unique<CpuBackend>(options.transform_convs);
  }
  if (name == "cuda") {
#ifdef QSWEEP_WITH_CUDA_BACKEND
    const int count = cuda_device_count();
    if (count <= 0) {
      user_error("run.backend = \"cuda\": no CUDA device is visible ({}); use \"cpu\" or \"auto\"",
                 cuda_device_status());
    }
    if (options.device < 0 || options.device >= count) {
      user_error("run.backend = \"cuda\": device {} does not exist; this machine has {} CUDA device(s), 0..{}",
                 options.device, count, count - 1);
    }
    return std::make_unique<CudaBackend>(options);
#else
    user_error("run.backend = \"cuda\": this qsweep was built without the CUDA backend (no nvcc or cuDNN "
               "found, or -DQSWEEP_CUDA=OFF); use \"cpu\" or \"auto\"");
#endif
  }
  user_error("run.backend = \"{}\" is not a backend; accepted: \"cpu\", \"cuda\", \"auto\"", name);
}

}  // namespace qsweep
