// The Python module fastalign._C. Ops are registered with TORCH_LIBRARY(fastalign, m) in the other
// csrc/ files and called through torch.ops.fastalign; this file only reports how the module was built,
// so that `python -m fastalign.info` can say which compiled backends exist and why not.
// Only pybind11 and the version header: torch/extension.h would pull in the whole C++ API (a third of
// the build time) for a module that registers no op itself.
#include <pybind11/pybind11.h>
#include <torch/headeronly/version.h>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef FASTALIGN_WITH_CUDA
  info["cuda"] = true;
#else
  info["cuda"] = false;
#endif
#ifdef _OPENMP
  info["openmp"] = true;
  info["openmp_max_threads"] = omp_get_max_threads();
#else
  info["openmp"] = false;
  info["openmp_max_threads"] = 1;
#endif
  info["torch_version"] = TORCH_VERSION;
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastalign compiled ops (C++/OpenMP, and CUDA when built with it)";
  m.def("build_info", &build_info, "How this extension was built: CUDA, OpenMP, torch version");
}
