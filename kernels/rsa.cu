// RSA CUDA kernels; see rsa.cuh for the contracts.
#include <cub/block/block_scan.cuh>
#include <math_constants.h>

#include <cmath>
#include <cstdint>

#include "rsa.cuh"

namespace fastalign {
namespace {

constexpr int kThreads = 256;

struct MaxOp {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a > b ? a : b; }
};
struct MinOp {
  __device__ int64_t operator()(int64_t a, int64_t b) const { return a < b ? a : b; }
};

// Carries the running scan value from one tile of a row to the next.
template <typename Op>
struct Carry {
  int64_t value;
  Op op;
  __device__ int64_t operator()(int64_t tile_aggregate) {
    const int64_t prefix = value;
    value = op(value, tile_aggregate);
    return prefix;
  }
};

template <typename T>
__global__ void avg_ranks_kernel(const T* __restrict__ sorted, const int64_t* __restrict__ order,
                                 double* __restrict__ out, int64_t* __restrict__ first, int64_t n) {
  using Scan = cub::BlockScan<int64_t, kThreads>;
  __shared__ typename Scan::TempStorage tmp;
  const int64_t row = blockIdx.x;
  const T* v = sorted + row * n;
  const int64_t* ord = order + row * n;
  int64_t* fst = first + row * n;
  double* o = out + row * n;
  // a row with NaN (sorted last) has no ranks: NaN throughout, as the CPU op and scipy's "propagate"
  // (the branch is the same for the whole block, so no thread skips a barrier the others reach)
  if (v[n - 1] != v[n - 1]) {
    for (int64_t k = threadIdx.x; k < n; k += kThreads) o[k] = CUDART_NAN;
    return;
  }

  // forward: first position of each element's tie group = running max of group-start positions
  Carry<MaxOp> fwd{0, MaxOp{}};
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t k = base + threadIdx.x;
    int64_t val = 0;
    if (k < n) val = (k == 0 || v[k] != v[k - 1]) ? k : 0;
    Scan(tmp).InclusiveScan(val, val, MaxOp{}, fwd);
    __syncthreads();
    if (k < n) fst[k] = val;
  }
  __syncthreads();
  // backward: last position of the group = running min of group-end positions, scanning from the end
  Carry<MinOp> bwd{n, MinOp{}};
  for (int64_t base = 0; base < n; base += kThreads) {
    const int64_t k = n - 1 - (base + threadIdx.x);
    int64_t val = n;
    if (k >= 0) val = (k == n - 1 || v[k] != v[k + 1]) ? k : n;
    Scan(tmp).InclusiveScan(val, val, MinOp{}, bwd);
    __syncthreads();
    if (k >= 0) o[ord[k]] = static_cast<double>(fst[k] + val + 2) * 0.5;
  }
}

// Row i of the k-th pair of the condensed order of n conditions (pairs of row r start at
// r * n - r * (r + 1) / 2); a double estimate corrected by integer checks.
__device__ __forceinline__ int64_t pair_row(int64_t k, int64_t n) {
  const double nn = static_cast<double>(n);
  int64_t i = static_cast<int64_t>(nn - 0.5 - sqrt((nn - 0.5) * (nn - 0.5) - 2.0 * static_cast<double>(k)));
  if (i < 0) i = 0;
  if (i > n - 2) i = n - 2;
  while (i > 0 && i * n - i * (i + 1) / 2 > k) --i;
  while (i < n - 2 && (i + 1) * n - (i + 1) * (i + 2) / 2 <= k) ++i;
  return i;
}

template <typename T>
__global__ void permute_condensed_kernel(const T* __restrict__ src, const int64_t* __restrict__ perms,
                                         T* __restrict__ out, int64_t batch, int64_t n) {
  const int64_t k_total = n * (n - 1) / 2;
  const int64_t p = blockIdx.y;
  const int64_t* pi = perms + p * n;
  for (int64_t k = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; k < k_total;
       k += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = pair_row(k, n);
    const int64_t j = k - (i * n - i * (i + 1) / 2) + i + 1;
    const int64_t a = pi[i], b = pi[j];
    const int64_t lo = a < b ? a : b, hi = a < b ? b : a;
    const int64_t src_k = lo * n - lo * (lo + 1) / 2 + (hi - lo - 1);
    for (int64_t bb = 0; bb < batch; ++bb) out[(p * batch + bb) * k_total + k] = src[bb * k_total + src_k];
  }
}

}  // namespace

template <typename T>
cudaError_t launch_rsa_avg_ranks(const T* sorted, const int64_t* order, double* out, int64_t* workspace,
                                 int64_t rows, int64_t n, cudaStream_t stream) {
  if (rows == 0 || n == 0) return cudaSuccess;
  if (rows > 0x7fffffff) return cudaErrorInvalidValue;
  avg_ranks_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(sorted, order, out, workspace, n);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_rsa_permute_condensed(const T* src, const int64_t* perms, T* out, int64_t n_perm,
                                         int64_t batch, int64_t n, cudaStream_t stream) {
  const int64_t k_total = n * (n - 1) / 2;
  if (n_perm == 0 || batch == 0 || k_total == 0) return cudaSuccess;
  if (n_perm > 65535) return cudaErrorInvalidValue;  // grid.y limit: the caller chunks permutations
  const int64_t blocks = (k_total + kThreads - 1) / kThreads;
  const dim3 grid(static_cast<unsigned>(blocks < 4096 ? blocks : 4096), static_cast<unsigned>(n_perm));
  permute_condensed_kernel<T><<<grid, kThreads, 0, stream>>>(src, perms, out, batch, n);
  return cudaGetLastError();
}

#define FASTALIGN_RSA_INSTANTIATE_RANKS(T)                                                              \
  template cudaError_t launch_rsa_avg_ranks<T>(const T*, const int64_t*, double*, int64_t*, int64_t, \
                                               int64_t, cudaStream_t);
FASTALIGN_RSA_INSTANTIATE_RANKS(double)
FASTALIGN_RSA_INSTANTIATE_RANKS(float)
FASTALIGN_RSA_INSTANTIATE_RANKS(int64_t)
FASTALIGN_RSA_INSTANTIATE_RANKS(int32_t)
template cudaError_t launch_rsa_permute_condensed<double>(const double*, const int64_t*, double*, int64_t, int64_t,
                                                          int64_t, cudaStream_t);
template cudaError_t launch_rsa_permute_condensed<float>(const float*, const int64_t*, float*, int64_t, int64_t,
                                                         int64_t, cudaStream_t);

}  // namespace fastalign
