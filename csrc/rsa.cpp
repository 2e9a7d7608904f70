// RSA CPU kernels (C++/OpenMP) and the schemas of the fastalign::rsa_* ops.
//
// rsa_rank(x) -> float64 average ranks along the last dim (scipy.stats.rankdata "average"). Each row
//   is sorted as (value, index) pairs, which keeps the comparisons on contiguous memory; tie groups are
//   walked once and get (first + last + 2) / 2 computed from int64 positions, so ranks are exact at
//   any length. Rows are spread over OpenMP threads.
// rsa_permute_condensed(src, perms) -> (P, B, K): src (B, K) condensed RDM vectors of n conditions,
//   perms (P, n) int64 permutations; out[p, b, k] = src[b, pair(perms[p, i], perms[p, j])] for the k-th
//   pair (i, j), i < j, i.e. the RDM with rows and columns relabelled. Pair indices are computed on the
//   fly instead of being read from a (P, K) int64 index tensor.
#include <torch/extension.h>

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastalign {
namespace {

template <typename T>
void rank_rows(const T* x, double* out, int64_t rows, int64_t n) {
#pragma omp parallel
  {
    std::vector<std::pair<T, int64_t>> buf(static_cast<size_t>(n));
#pragma omp for schedule(dynamic, 1)
    for (int64_t r = 0; r < rows; ++r) {
      const T* xr = x + r * n;
      double* o = out + r * n;
      for (int64_t k = 0; k < n; ++k) buf[k] = {xr[k], k};
      std::sort(buf.begin(), buf.end(),
                [](const std::pair<T, int64_t>& a, const std::pair<T, int64_t>& b) { return a.first < b.first; });
      int64_t i = 0;
      while (i < n) {
        int64_t j = i + 1;
        while (j < n && buf[j].first == buf[i].first) ++j;
        // positions i .. j-1 hold one tie group: ranks i+1 .. j, average (i + 1 + j) / 2
        const double avg = static_cast<double>(i + 1 + j) * 0.5;
        for (int64_t k = i; k < j; ++k) o[buf[k].second] = avg;
        i = j;
      }
    }
  }
}

at::Tensor rank_cpu(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "rsa_rank: x must be a CPU tensor, got ", x.device());
  TORCH_CHECK(x.dim() >= 1, "rsa_rank: x must have at least 1 dim, got a 0-dim tensor");
  const auto xc = x.contiguous();
  auto out = at::empty(x.sizes(), x.options().dtype(at::kDouble));
  const int64_t n = x.size(-1);
  if (x.numel() == 0) return out;
  const int64_t rows = x.numel() / n;
  switch (x.scalar_type()) {
    case at::kDouble: rank_rows(xc.data_ptr<double>(), out.data_ptr<double>(), rows, n); break;
    case at::kFloat: rank_rows(xc.data_ptr<float>(), out.data_ptr<double>(), rows, n); break;
    case at::kLong: rank_rows(xc.data_ptr<int64_t>(), out.data_ptr<double>(), rows, n); break;
    case at::kInt: rank_rows(xc.data_ptr<int32_t>(), out.data_ptr<double>(), rows, n); break;
    default: TORCH_CHECK(false, "rsa_rank: x must be float64, float32, int64 or int32, got ", x.scalar_type());
  }
  return out;
}

int64_t n_from_pairs(int64_t k) {
  int64_t n = 2;
  while (n * (n - 1) / 2 < k) ++n;
  return n;
}

template <typename T>
void permute_condensed(const T* src, const int64_t* perms, T* out, int64_t n_perm, int64_t batch, int64_t n) {
  const int64_t k_total = n * (n - 1) / 2;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t p = 0; p < n_perm; ++p) {
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t* pi = perms + p * n;
      const T* s = src + b * k_total;
      T* o = out + (p * batch + b) * k_total;
      int64_t k = 0;
      for (int64_t i = 0; i < n; ++i) {
        const int64_t pi_i = pi[i];
        for (int64_t j = i + 1; j < n; ++j, ++k) {
          const int64_t pj = pi[j];
          const int64_t lo = std::min(pi_i, pj), hi = std::max(pi_i, pj);
          o[k] = s[lo * n - lo * (lo + 1) / 2 + (hi - lo - 1)];
        }
      }
    }
  }
}

at::Tensor permute_condensed_cpu(const at::Tensor& src, const at::Tensor& perms) {
  TORCH_CHECK(src.device().is_cpu() && perms.device().is_cpu(), "rsa_permute_condensed: CPU tensors expected");
  TORCH_CHECK(src.dim() == 2, "rsa_permute_condensed: src must be (B, K), got ", src.sizes());
  TORCH_CHECK(perms.dim() == 2 && perms.scalar_type() == at::kLong,
              "rsa_permute_condensed: perms must be (P, n) int64, got ", perms.sizes(), " ", perms.scalar_type());
  const int64_t n = perms.size(1), k = src.size(1);
  TORCH_CHECK(n >= 2 && n * (n - 1) / 2 == k, "rsa_permute_condensed: src has ", k, " pairs but perms permute ",
              n, " conditions (", n_from_pairs(k), " expected)");
  const auto pc = perms.contiguous();
  TORCH_CHECK(pc.numel() == 0 || (pc.min().item<int64_t>() >= 0 && pc.max().item<int64_t>() < n),
              "rsa_permute_condensed: perms entries must lie in [0, ", n, ")");
  const auto sc = src.contiguous();
  auto out = at::empty({perms.size(0), src.size(0), k}, src.options());
  switch (src.scalar_type()) {
    case at::kDouble:
      permute_condensed(sc.data_ptr<double>(), pc.data_ptr<int64_t>(), out.data_ptr<double>(), perms.size(0),
                        src.size(0), n);
      break;
    case at::kFloat:
      permute_condensed(sc.data_ptr<float>(), pc.data_ptr<int64_t>(), out.data_ptr<float>(), perms.size(0),
                        src.size(0), n);
      break;
    default: TORCH_CHECK(false, "rsa_permute_condensed: src must be float64 or float32, got ", src.scalar_type());
  }
  return out;
}

}  // namespace
}  // namespace fastalign

TORCH_LIBRARY_FRAGMENT(fastalign, m) {
  m.def("rsa_rank(Tensor x) -> Tensor");
  m.def("rsa_permute_condensed(Tensor src, Tensor perms) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastalign, CPU, m) {
  m.impl("rsa_rank", &fastalign::rank_cpu);
  m.impl("rsa_permute_condensed", &fastalign::permute_condensed_cpu);
}
