// CUDA implementations of the fastalign::rsa_* ops (schemas in csrc/rsa.cpp): input checks, the sort
// (ATen's segmented sort), and launches of the kernels in kernels/rsa.cu on the current stream. As on the
// CPU, bad operands raise ValueError (TORCH_CHECK_VALUE) or TypeError (TORCH_CHECK_TYPE: dtypes), and
// TORCH_CHECK (RuntimeError) is for what the caller cannot cause (a failed launch). A constant row's
// normalised centred ranks are NaN (0 / 0), as on the CPU.
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/extension.h>

#include "rsa.cuh"

namespace fastalign {
namespace {

void check_launch(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, what, ": CUDA launch failed: ", cudaGetErrorString(err));
}

// The checks of csrc/rsa.cpp's ranks_impl, under the name of the op that was called.
at::Tensor ranks_cuda(const char* op, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.is_cuda(), op, ": x must be a CUDA tensor, got ", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least 1 dim, got a 0-dim tensor");
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kDouble || t == at::kFloat || t == at::kLong || t == at::kInt, op,
                   ": x must be float64, float32, int64 or int32, got ", t);
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
    default: TORCH_CHECK(false, "unreachable: ranks_cuda admits no other dtype");
  }
  check_launch(err, op);
  return out;
}

at::Tensor rank_cuda(const at::Tensor& x) { return ranks_cuda("rsa_rank", x); }

at::Tensor centered_ranks_cuda(const at::Tensor& x, bool normalize, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(dtype == at::kDouble || dtype == at::kFloat,
                   "rsa_centered_ranks: dtype must be float64 or float32, got ", dtype);
  auto r = ranks_cuda("rsa_centered_ranks", x);
  r.sub_(static_cast<double>(x.size(-1) + 1) * 0.5);  // the mean of average ranks, exactly
  if (normalize) r.div_(r.norm(2, -1, /*keepdim=*/true));
  return r.to(dtype);
}

// Every row of perms (P, n) must be a permutation of 0 .. n-1 (as csrc/rsa.cpp checks on the CPU): a
// repeated index leaves another condition out, one outside the range reads outside src. A row is one
// exactly when it sorts to 0 .. n-1: one segmented sort and one sync for valid input.
void check_permutations(const char* op, const at::Tensor& pc, int64_t n) {
  if (pc.numel() == 0) return;
  const auto sorted = std::get<0>(pc.sort(/*dim=*/1));
  const auto bad = sorted.ne(at::arange(n, pc.options()).unsqueeze(0)).any(1);
  if (!bad.any().item<bool>()) return;
  const int64_t row = bad.nonzero()[0][0].item<int64_t>();
  TORCH_CHECK_VALUE(false, op, ": perms row ", row, " is not a permutation of 0..", n - 1,
                    ": an index repeats or lies outside [0, ", n, ")");
}

at::Tensor permute_condensed_cuda(const at::Tensor& src, const at::Tensor& perms) {
  TORCH_CHECK_VALUE(src.is_cuda() && perms.is_cuda() && src.device() == perms.device(),
                    "rsa_permute_condensed: src and perms must be CUDA tensors on one device, got ", src.device(),
                    " and ", perms.device());
  TORCH_CHECK_VALUE(src.dim() == 2, "rsa_permute_condensed: src must be (B, K), got ", src.sizes());
  TORCH_CHECK_TYPE(perms.scalar_type() == at::kLong, "rsa_permute_condensed: perms must be (P, n) int64, got ",
                   perms.sizes(), " ", perms.scalar_type());
  TORCH_CHECK_VALUE(perms.dim() == 2, "rsa_permute_condensed: perms must be (P, n) int64, got ", perms.sizes(), " ",
                    perms.scalar_type());
  const int64_t n = perms.size(1), k = src.size(1);
  TORCH_CHECK_VALUE(n >= 2 && n * (n - 1) / 2 == k, "rsa_permute_condensed: src (B, K) must hold n(n-1)/2 = ",
                    n * (n - 1) / 2, " pairs for perms of n = ", n, " conditions (n >= 2), got K = ", k);
  TORCH_CHECK_VALUE(perms.size(0) <= 65535,
                    "rsa_permute_condensed: at most 65535 permutations per call (chunk them), got ", perms.size(0));
  const c10::cuda::CUDAGuard guard(src.device());
  const auto pc = perms.contiguous();
  check_permutations("rsa_permute_condensed", pc, n);
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
    default:
      TORCH_CHECK_TYPE(false, "rsa_permute_condensed: src must be float64 or float32, got ", src.scalar_type());
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
