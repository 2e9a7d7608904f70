// CUDA implementations of the fastalign::rsa_* ops (schemas in csrc/rsa.cpp): input checks, the sort
// (ATen's segmented sort), and launches of the kernels in kernels/rsa.cu on the current stream.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "rsa.cuh"

namespace fastalign {
namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA launch failed: ", cudaGetErrorString(err));
}

at::Tensor rank_cuda(const at::Tensor& x) {
  TORCH_CHECK(x.is_cuda(), "rsa_rank: x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK(x.dim() >= 1, "rsa_rank: x must have at least 1 dim, got a 0-dim tensor");
  const c10::cuda::CUDAGuard guard(x.device());
  auto out = at::empty(x.sizes(), x.options().dtype(at::kDouble));
  const int64_t n = x.size(-1);
  if (x.numel() == 0) return out;
  const int64_t rows = x.numel() / n;
  const auto sorted = at::sort(x.contiguous().view({rows, n}), /*stable=*/true, /*dim=*/-1, /*descending=*/false);
  const auto& vals = std::get<0>(sorted);
  const auto order = std::get<1>(sorted).contiguous();
  auto workspace = at::empty({rows, n}, x.options().dtype(at::kLong));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  switch (x.scalar_type()) {
    case at::kDouble:
      err = launch_rsa_avg_ranks(vals.data_ptr<double>(), order.data_ptr<int64_t>(), out.data_ptr<double>(),
                                 workspace.data_ptr<int64_t>(), rows, n, stream);
      break;
    case at::kFloat:
      err = launch_rsa_avg_ranks(vals.data_ptr<float>(), order.data_ptr<int64_t>(), out.data_ptr<double>(),
                                 workspace.data_ptr<int64_t>(), rows, n, stream);
      break;
    case at::kLong:
      err = launch_rsa_avg_ranks(vals.data_ptr<int64_t>(), order.data_ptr<int64_t>(), out.data_ptr<double>(),
                                 workspace.data_ptr<int64_t>(), rows, n, stream);
      break;
    case at::kInt:
      err = launch_rsa_avg_ranks(vals.data_ptr<int32_t>(), order.data_ptr<int64_t>(), out.data_ptr<double>(),
                                 workspace.data_ptr<int64_t>(), rows, n, stream);
      break;
    default: TORCH_CHECK(false, "rsa_rank: x must be float64, float32, int64 or int32, got ", x.scalar_type());
  }
  check_launch(err, "rsa_rank");
  return out;
}

at::Tensor centered_ranks_cuda(const at::Tensor& x, bool normalize, at::ScalarType dtype) {
  TORCH_CHECK(dtype == at::kDouble || dtype == at::kFloat, "rsa_centered_ranks: dtype must be float64 or float32");
  auto r = rank_cuda(x);
  r.sub_(static_cast<double>(x.size(-1) + 1) * 0.5);  // the mean of average ranks, exactly
  if (normalize) r.div_(r.norm(2, -1, /*keepdim=*/true));
  return r.to(dtype);
}

at::Tensor permute_condensed_cuda(const at::Tensor& src, const at::Tensor& perms) {
  TORCH_CHECK(src.is_cuda() && perms.is_cuda() && src.device() == perms.device(),
              "rsa_permute_condensed: src and perms must be CUDA tensors on one device");
  TORCH_CHECK(src.dim() == 2, "rsa_permute_condensed: src must be (B, K), got ", src.sizes());
  TORCH_CHECK(perms.dim() == 2 && perms.scalar_type() == at::kLong,
              "rsa_permute_condensed: perms must be (P, n) int64, got ", perms.sizes(), " ", perms.scalar_type());
  const int64_t n = perms.size(1), k = src.size(1);
  TORCH_CHECK(n >= 2 && n * (n - 1) / 2 == k, "rsa_permute_condensed: src has ", k, " pairs but perms permute ",
              n, " conditions");
  TORCH_CHECK(perms.size(0) <= 65535, "rsa_permute_condensed: at most 65535 permutations per call (chunk them)");
  const c10::cuda::CUDAGuard guard(src.device());
  const auto pc = perms.contiguous();
  TORCH_CHECK(pc.numel() == 0 || (pc.min().item<int64_t>() >= 0 && pc.max().item<int64_t>() < n),
              "rsa_permute_condensed: perms entries must lie in [0, ", n, ")");
  const auto sc = src.contiguous();
  auto out = at::empty({perms.size(0), src.size(0), k}, src.options());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  cudaError_t err = cudaSuccess;
  switch (src.scalar_type()) {
    case at::kDouble:
      err = launch_rsa_permute_condensed(sc.data_ptr<double>(), pc.data_ptr<int64_t>(), out.data_ptr<double>(),
                                         perms.size(0), src.size(0), n, stream);
      break;
    case at::kFloat:
      err = launch_rsa_permute_condensed(sc.data_ptr<float>(), pc.data_ptr<int64_t>(), out.data_ptr<float>(),
                                         perms.size(0), src.size(0), n, stream);
      break;
    default: TORCH_CHECK(false, "rsa_permute_condensed: src must be float64 or float32, got ", src.scalar_type());
  }
  check_launch(err, "rsa_permute_condensed");
  return out;
}

}  // namespace
}  // namespace fastalign

TORCH_LIBRARY_IMPL(fastalign, CUDA, m) {
  m.impl("rsa_rank", &fastalign::rank_cuda);
  m.impl("rsa_centered_ranks", &fastalign::centered_ranks_cuda);
  m.impl("rsa_permute_condensed", &fastalign::permute_condensed_cuda);
}
