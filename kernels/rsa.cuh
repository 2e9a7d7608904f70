// RSA CUDA kernels: plain launchers on raw pointers and a cudaStream_t (no torch headers).
//
// launch_rsa_avg_ranks: rows of values already sorted ascending (with the sort order), -> average ranks
//   (scipy.stats.rankdata "average") scattered back to the original positions, float64. One block per
//   row; tie groups come from a block-wide max-scan of group starts and a reversed min-scan of group
//   ends over tiles of the row, in int64 (exact at any length). workspace: rows * n int64.
// launch_rsa_permute_condensed: out[p, b, k] = src[b, pair(perm[p, i], perm[p, j])] for the k-th pair
//   (i < j) of n conditions, i.e. condensed RDMs with their conditions relabelled, pair indices computed
//   on the fly.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace fastalign {

template <typename T>
cudaError_t launch_rsa_avg_ranks(const T* sorted, const int64_t* order, double* out, int64_t* workspace,
                                 int64_t rows, int64_t n, cudaStream_t stream);

template <typename T>
cudaError_t launch_rsa_permute_condensed(const T* src, const int64_t* perms, T* out, int64_t n_perm,
                                         int64_t batch, int64_t n, cudaStream_t stream);

}  // namespace fastalign
