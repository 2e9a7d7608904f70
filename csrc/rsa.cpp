// RSA CPU kernels (C++/OpenMP) and the schemas of the fastalign::rsa_* ops, and the two other CPU ops of
// fastalign._C (rng_discard, conv_taps): one translation unit, since each costs about 12 s of compiling
// torch's headers.
//
// rsa_rank(x) -> float64 average ranks along the last dim (scipy.stats.rankdata "average"). Each row
//   is radix-sorted on monotone integer keys of its values (O(n); runs of equal keys sorted by value),
//   or on the values' order-preserving bits when it holds inf; tie groups are walked once and get
//   (first + last + 2) / 2 from int64 positions, so ranks are exact at any length. Rows are spread
//   over OpenMP threads.
// rsa_centered_ranks(x, normalize, dtype): the same ranks minus their mean (n + 1) / 2, optionally
//   scaled to unit norm, in float32 or float64: Spearman's / rho-a's per-RDM vectors in one pass. A
//   constant row has no unit-norm vector: with normalize it comes out NaN, as a row with NaN does; the
//   Python API finds undefined statistics from that NaN and names the RDM (compare_rdms, noise_ceiling).
// rsa_rdm_direct(x, method) -> (B, n(n-1)/2): RDMs of (B, n, p) patterns computed pair by pair without
//   a Gram matrix; for few features (EEG channels x a short window) this beats GEMM + extraction.
//   Exact at any finite magnitude: patterns (correlation, cosine) or pattern sets (euclidean) whose sums
//   of squares could overflow or underflow are multiplied by an exact power of two first, euclidean
//   distances scaled back; one beyond the dtype's range is a ValueError. So is a pattern with NaN / inf,
//   a constant one (correlation) or an all-zero one (cosine): their distances are undefined.
// rsa_rdm_compare(x, w, rdm_method, compare) -> (B, M) float64: fused RSA; each (n, p) pattern set's
//   RDM, ranked (spearman / rho-a) or centred (pearson / cosine) in a per-thread buffer and dotted with
//   the M prepared model vectors w (M, K); the (B, K) RDMs are never stored. Patterns are checked and
//   scaled as in rsa_rdm_direct; a constant RDM, or one whose euclidean distances exceed the dtype's
//   range, gives NaN, which the Python API turns into an error naming the window.
// rsa_spearman_ceiling(x, w) -> (sims (S, B, M), lower (B,), upper (B,)) float64: for (S, B, K) float64
//   subject RDMs (S subjects at B points) and (M, K) prepared model vectors, each RDM's Spearman
//   similarity with each model and the Spearman noise ceiling at each point (rsatoolbox's bounds: mean
//   over subjects of the correlation with the pool of all subjects' ranks / of the others'), each RDM
//   ranked once in a per-thread buffer (no (S, B, K) ranks are stored); NaN bounds where a pool is
//   constant.
// rsa_rdm_spearman_ceiling(x, w, rdm_method) -> the same for the RDMs of (S, B, n, p) pattern sets, each
//   computed into a per-thread buffer as rsa_rdm_compare computes it and ranked there (no (S, B, K) RDMs
//   are stored); a set without a Spearman statistic (a refused pattern, a constant RDM) makes its point NaN.
// rsa_kendall_tau_a(a, b, ia, ib) -> (P,) float64: Kendall's tau-a of rows a[ia[p]] and b[ib[p]] in
//   O(K log K) each (sort + merge-sort inversion count), exact integer pair counts; NaN for a pair with
//   NaN in either row.
// rsa_cluster_null(x, flips, threshold, tail) -> (P,) float64: the sign-flip null of the cluster test; for
//   each flip p (a row of +-1, one per subject) the one-sample t curve of flips[p] * x (x: (S, T) effects)
//   and its largest cluster mass (tail 1: runs of t > threshold, mass sum t; tail -1: runs of t <
//   -threshold, mass sum -t; tail 0: the larger; 0 without a run). Each time point's effects are scaled
//   by an exact power of two where their squares could overflow or underflow (t does not change).
// rsa_permute_condensed(src, perms) -> (P, B, K): src (B, K) condensed RDM vectors of n conditions,
//   perms (P, n) int64 permutations (each row checked to be one); out[p, b, k] = src[b, pair(perms[p, i],
//   perms[p, j])] for the k-th pair (i, j), i < j, i.e. the RDM with rows and columns relabelled. Pair
//   indices are computed on the fly instead of being read from a (P, K) int64 index tensor.
// rsa_row_stats(x) -> (R, 3) float64: each row of (R, p) float32 / float64 patterns' max, min (NaN for a row
//   with NaN, as amax / amin) and sum, in one vectorised pass: the checks and means of the GEMM-based RDMs
//   of many features (torch_chunked, CPU), where torch takes a pass per statistic.
// rsa_gram_centered(x, mean, gram) -> (B * n, 2) float64: gram = Y Y^T for each (n, p) pattern set of x with
//   Y = x - mean (in x's dtype, as torch.sub of that mean), and each row's sum and sum of squares of Y: the
//   GEMM-based correlation RDMs' Gram matrices (torch_chunked, CPU), centred while packed for register tiles
//   that compute the upper triangle only.
// conv_taps(weight, r0, r1, c0, c1) -> (C_out, r1 - r0, c1 - c0, C_in): the kernel taps [r0, r1) x [c0, c1) of
//   a (C_out, C_in, kh, kw) conv weight, tap-major (out[k, i, j, c] = weight[k, c, r0 + i, c0 + j]): the
//   weight matrix of a conv restricted to the taps that reach its input (a 3x3 conv on 1x1 maps reads
//   only its centre). conv_taps_backward(grad, kh, kw, r0, c0) -> (C_out, C_in, kh, kw): the weight's
//   gradient, grad at those taps and 0 at the others. Plain copies (any floating dtype), one output channel
//   per task; torch's strided copies of these layouts take 2-5x longer. Meta kernels give their shapes to
//   torch.compile.
//
// Bad operands raise ValueError (TORCH_CHECK_VALUE: shapes, values, devices) or TypeError
// (TORCH_CHECK_TYPE: dtypes), as the Python API does; TORCH_CHECK (RuntimeError) marks internal invariants.
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
// The narrow ATen headers this file uses instead of torch/extension.h (which parses the whole C++ API
// and pybind11: most of the build time).
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace fastalign {
namespace {

// Compiled for the baseline ISA and for x86-64-v3 (AVX2 + FMA), chosen at load time (GCC ifunc). An
// x86-64-v4 (AVX-512) clone of everything measured 14% slower on the fused time-resolved RSA on a 2-core Xeon
// (with the 4-column tiles of the time); only the RDM register tiles (direct_rows, the Gram tiles) and the
// model dot products (dot_block) have an AVX-512 build.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTALIGN_CLONES __attribute__((target_clones("default", "arch=x86-64-v3")))
#else
#define FASTALIGN_CLONES
#endif

// Order-preserving unsigned keys: unsigned comparison of key(v) equals the numeric order of v.
// -0.0 and +0.0 get adjacent keys (nothing sorts between them); ties are decided on the values.
inline uint64_t radix_key(double v) {
  uint64_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u >> 63) ? ~u : (u | (uint64_t{1} << 63));
}
inline uint32_t radix_key(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  return (u >> 31) ? ~u : (u | (uint32_t{1} << 31));
}
inline uint64_t radix_key(int64_t v) { return static_cast<uint64_t>(v) ^ (uint64_t{1} << 63); }
inline uint32_t radix_key(int32_t v) { return static_cast<uint32_t>(v) ^ (uint32_t{1} << 31); }

constexpr int kDigitBits = 11;
constexpr uint32_t kBuckets = 1u << kDigitBits;

// Stable LSD radix sort of one row's (key, index) pairs; a pass whose digit is the same for every key
// is skipped (the high digits of data in a narrow range). The sorted positions end up in idx.
template <typename K>
struct RadixSorter {
  std::vector<K> keys, keys_tmp;
  std::vector<int64_t> idx, idx_tmp;
  std::vector<int64_t> hist;

  template <typename T>
  void sort(const T* x, int64_t n) {
    constexpr int passes = (static_cast<int>(sizeof(K)) * 8 + kDigitBits - 1) / kDigitBits;
    keys.resize(n), keys_tmp.resize(n), idx.resize(n), idx_tmp.resize(n);
    hist.assign(static_cast<size_t>(passes) * kBuckets, 0);
    for (int64_t k = 0; k < n; ++k) {
      const K key = radix_key(x[k]);
      keys[k] = key;
      idx[k] = k;
      for (int p = 0; p < passes; ++p) ++hist[p * kBuckets + ((key >> (p * kDigitBits)) & (kBuckets - 1))];
    }
    for (int p = 0; p < passes; ++p) {
      int64_t* h = hist.data() + p * kBuckets;
      const K digit0 = (keys[0] >> (p * kDigitBits)) & (kBuckets - 1);
      if (h[digit0] == n) continue;  // every key has this digit: the pass would not move anything
      int64_t sum = 0;
      for (uint32_t d = 0; d < kBuckets; ++d) {
        const int64_t c = h[d];
        h[d] = sum;
        sum += c;
      }
      for (int64_t k = 0; k < n; ++k) {
        const int64_t dst = h[(keys[k] >> (p * kDigitBits)) & (kBuckets - 1)]++;
        keys_tmp[dst] = keys[k];
        idx_tmp[dst] = idx[k];
      }
      keys.swap(keys_tmp);
      idx.swap(idx_tmp);
    }
  }
};

// Exact integer arithmetic for rank sums of squares (n^3 overflows int64 beyond n = 2^21).
#ifdef __SIZEOF_INT128__
using Wide = __int128;
#else
using Wide = long double;
#endif

template <typename T>
using KeyOf = std::conditional_t<sizeof(T) == 8, uint64_t, uint32_t>;

// A value and its position in the row.
template <typename T>
struct Entry {
  T v;
  uint32_t i;
};

// v != v without the self-comparison of an integer (always false; GCC warns about it).
template <typename A>
inline bool is_nan(A v) {
  if constexpr (std::is_floating_point_v<A>) {
    return v != v;
  } else {
    return false;
  }
}

// Sorting for average ranks: an LSD radix sort of monotone integer keys. Each value gets the key
// floor((v - min) * (levels - 1) / (max - min)), which never decreases as v grows (every rounding step is
// monotone), so positions sorted by key are sorted by value except inside runs of equal keys; those runs
// (equal values, or distinct values closer than (max - min) / levels) are sorted by value afterwards, on
// copies of their entries. Keys and positions travel packed in one uint64 (key << 32 | position) through
// stable scatter passes of d-bit digits, d ~ log2(n) within [6, 11] so that the per-row histogram and
// prefix-sum work stays below the row's own: two passes (2d-bit keys) below 4,096 entries, three of 8-bit
// digits (24-bit keys, sort_bytes) up to 65,536, three of 11 (32-bit keys) beyond; the histograms all come
// from the keys before the first pass. O(n) for spread-out values; a run of many
// distinct values under one key (next to a far outlier) is comparison-sorted. Very short rows are sorted
// as (value, position) entries; constant rows and rows with NaN (ranks NaN, as scipy's "propagate")
// need no sort; rows with inf (or a range that overflows, or is 0 in double for distinct int64 values
// beyond 2^53, or n >= 2^31) go to the radix sort on the values' order-preserving bits.
constexpr int64_t kShortRow = 16;
constexpr int64_t kShortKeysUpTo = int64_t{1} << 16;
// From this many entries up to kShortKeysUpTo the keys are 24 bits in three passes of 8-bit digits
// (RowSorter::sort_bytes); below, two passes of d-bit digits (d reaches 11 from 2,048 entries).
constexpr int64_t kByteKeysFrom = int64_t{1} << 12;

// Sorts entries by value: insertion sort for a few (no moves at all when they are equal), else std::sort.
template <typename T>
void sort_by_value(std::vector<Entry<T>>& e) {
  const int64_t m = static_cast<int64_t>(e.size());
  if (m > 32) {
    std::sort(e.begin(), e.end(), [](const Entry<T>& a, const Entry<T>& b) { return a.v < b.v; });
    return;
  }
  for (int64_t u = 1; u < m; ++u) {
    const Entry<T> cur = e[u];
    int64_t w = u - 1;
    for (; w >= 0 && cur.v < e[w].v; --w) e[w + 1] = e[w];
    e[w + 1] = cur;
  }
}

// A row's smallest and largest values and whether it holds NaN (then lo / hi are meaningless).
template <typename T>
struct RowRange {
  T lo, hi;
  bool nan;
};

// One pass over a floating row in independent vector lanes (GCC vector extensions; the baseline ISA
// runs each as SSE2 halves): `v < lo ? v : lo` is what minpd computes, so the loop vectorises without
// -ffast-math, and NaN, which no comparison lets into lo / hi, is found by v != v in its own lanes.
// A single scalar accumulator serialises on the compare latency (1.5 ns per value on a 2-core Xeon,
// more than a third of a radix pass).
template <typename T>
inline __attribute__((always_inline)) RowRange<T> row_range_impl(const T* x, int64_t n) {
  constexpr int kW = 32 / static_cast<int>(sizeof(T));  // lanes per 32-byte vector
  typedef T V __attribute__((vector_size(32)));
  typedef std::conditional_t<sizeof(T) == 8, int64_t, int32_t> I;
  typedef I M __attribute__((vector_size(32)));
  V lo0, hi0, lo1, hi1;
  M nan0 = {}, nan1 = {};
  for (int u = 0; u < kW; ++u) lo0[u] = hi0[u] = lo1[u] = hi1[u] = x[0];
  int64_t k = 0;
  for (; k + 2 * kW <= n; k += 2 * kW) {
    V a, b;
    std::memcpy(&a, x + k, sizeof a);
    std::memcpy(&b, x + k + kW, sizeof b);
    lo0 = a < lo0 ? a : lo0;
    hi0 = a > hi0 ? a : hi0;
    lo1 = b < lo1 ? b : lo1;
    hi1 = b > hi1 ? b : hi1;
    nan0 |= a != a;
    nan1 |= b != b;
  }
  T lo = x[0], hi = x[0];
  bool nan = false;
  for (int u = 0; u < kW; ++u) {
    lo = std::min(lo, std::min(lo0[u], lo1[u]));
    hi = std::max(hi, std::max(hi0[u], hi1[u]));
    nan |= (nan0[u] | nan1[u]) != 0;
  }
  for (; k < n; ++k) {
    const T v = x[k];
    lo = v < lo ? v : lo;
    hi = v > hi ? v : hi;
    nan |= is_nan(v);
  }
  return {lo, hi, nan};
}

FASTALIGN_CLONES RowRange<double> row_range_f64(const double* x, int64_t n) { return row_range_impl(x, n); }
FASTALIGN_CLONES RowRange<float> row_range_f32(const float* x, int64_t n) { return row_range_impl(x, n); }

inline RowRange<double> row_range(const double* x, int64_t n) { return row_range_f64(x, n); }
inline RowRange<float> row_range(const float* x, int64_t n) { return row_range_f32(x, n); }

// keys[k] = floor(clamp((x[k] - lo) * scale, 0, top)) for top < 2^31, the sort keys of RowSorter's byte-digit
// path, in their own loop: the conversion through int32 vectorises (cvttpd2dq), where the scalar loop fused
// with the histograms took 1.0-1.4 ns per value on the baseline ISA and 0.3 vectorised (x86-64-v3). The same
// double arithmetic at any width: the keys, hence the ranks, are the same on every CPU.
template <typename T>
inline __attribute__((always_inline)) void byte_keys_impl(const T* x, int64_t n, double lo, double scale, double top,
                                                          uint32_t* keys) {
  for (int64_t k = 0; k < n; ++k) {
    double f = (static_cast<double>(x[k]) - lo) * scale;
    f = f < 0 ? 0 : (f > top ? top : f);
    keys[k] = static_cast<uint32_t>(static_cast<int32_t>(f));
  }
}
FASTALIGN_CLONES void byte_keys_f64(const double* x, int64_t n, double lo, double scale, double top, uint32_t* keys) {
  byte_keys_impl(x, n, lo, scale, top, keys);
}
FASTALIGN_CLONES void byte_keys_f32(const float* x, int64_t n, double lo, double scale, double top, uint32_t* keys) {
  byte_keys_impl(x, n, lo, scale, top, keys);
}
template <typename T>
void byte_keys(const T* x, int64_t n, double lo, double scale, double top, uint32_t* keys) {
  if constexpr (std::is_same_v<T, double>) {
    byte_keys_f64(x, n, lo, scale, top, keys);
  } else if constexpr (std::is_same_v<T, float>) {
    byte_keys_f32(x, n, lo, scale, top, keys);
  } else {
    byte_keys_impl(x, n, lo, scale, top, keys);
  }
}

// Integers: four independent scalar accumulators (no NaN).
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
RowRange<T> row_range(const T* x, int64_t n) {
  T lo4[4], hi4[4];
  for (int u = 0; u < 4; ++u) lo4[u] = hi4[u] = x[0];
  int64_t k = 0;
  for (; k + 4 <= n; k += 4) {
    for (int u = 0; u < 4; ++u) {
      lo4[u] = std::min(lo4[u], x[k + u]);
      hi4[u] = std::max(hi4[u], x[k + u]);
    }
  }
  for (; k < n; ++k) {
    lo4[0] = std::min(lo4[0], x[k]);
    hi4[0] = std::max(hi4[0], x[k]);
  }
  return {std::min(std::min(lo4[0], lo4[1]), std::min(lo4[2], lo4[3])),
          std::max(std::max(hi4[0], hi4[1]), std::max(hi4[2], hi4[3])), false};
}

template <typename T>
struct RowSorter {
  RadixSorter<KeyOf<T>> radix;
  std::vector<uint64_t> packed, tmp;  // (key << 32 | position), sorted by key after sort()
  std::vector<Entry<T>> entries;      // short rows, and one equal-key run at a time
  std::vector<uint32_t> hist, keys;

  enum class Kind { kEntries, kPacked, kRadix, kConstant, kNaN };

  // Sorts the row; says which result (entries, packed, radix.idx) holds it, or that it needs no sort.
  Kind sort(const T* x, int64_t n) {
    if (n >= (int64_t{1} << 31) - 1) return Kind::kRadix;
    const RowRange<T> r = row_range(x, n);
    return r.nan ? Kind::kNaN : sort(x, n, r.lo, r.hi);
  }

  // The same for a row without NaN whose smallest and largest values are known (row_range's).
  Kind sort(const T* x, int64_t n, T lo_exact, T hi_exact) {
    if (n >= (int64_t{1} << 31) - 1) return Kind::kRadix;
    if (lo_exact == hi_exact) return Kind::kConstant;
    if (n <= kShortRow) {
      entries.resize(n);
      for (int64_t k = 0; k < n; ++k) entries[k] = {x[k], static_cast<uint32_t>(k)};
      sort_by_value(entries);
      return Kind::kEntries;
    }
    // keys come from doubles: a range of 0 (int64 values that round alike) leaves scale infinite and
    // the row to the radix sort on the values' own bits
    const double lo = static_cast<double>(lo_exact), hi = static_cast<double>(hi_exact);
    const double range = hi - lo;
    if (!std::isfinite(range)) return Kind::kRadix;
    if (n >= kByteKeysFrom && n <= kShortKeysUpTo) return sort_bytes(x, n, lo, range);
    int d = 6;  // 12-bit keys at least: coarser ones leave small rows with many equal-key runs
    while (d < kDigitBits && (int64_t{1} << (d + 1)) <= n) ++d;
    const int passes = n <= kShortKeysUpTo ? 2 : 3;
    if (passes == 3) d = kDigitBits;
    const int key_bits = std::min(passes * d, 32);
    const double top = static_cast<double>((uint64_t{1} << key_bits) - 1);
    const double scale = top / range;
    if (!std::isfinite(scale)) return Kind::kRadix;
    const uint32_t buckets = 1u << d, mask = buckets - 1;
    packed.resize(n), tmp.resize(n);
    hist.assign(static_cast<size_t>(passes) * buckets, 0);
    uint32_t* h = hist.data();
    uint64_t* a = packed.data();
    const auto keys = [&](auto three) {
      for (int64_t k = 0; k < n; ++k) {
        double f = (static_cast<double>(x[k]) - lo) * scale;
        f = f < 0 ? 0 : (f > top ? top : f);
        const uint32_t key = static_cast<uint32_t>(f);
        a[k] = (static_cast<uint64_t>(key) << 32) | static_cast<uint64_t>(k);
        ++h[key & mask];
        ++h[buckets + ((key >> d) & mask)];
        if (decltype(three)::value) ++h[2 * buckets + (key >> (2 * d))];
      }
    };
    if (passes == 3) {
      keys(std::true_type{});
    } else {
      keys(std::false_type{});
    }
    uint64_t* src = packed.data();
    uint64_t* dst = tmp.data();
    for (int p = 0; p < passes; ++p) {
      uint32_t* hp = h + p * buckets;
      const int shift = 32 + p * d;
      uint32_t sum = 0;
      for (uint32_t b = 0; b < buckets; ++b) {
        const uint32_t c = hp[b];
        hp[b] = sum;
        sum += c;
      }
      for (int64_t k = 0; k < n; ++k) dst[hp[(src[k] >> shift) & mask]++] = src[k];
      std::swap(src, dst);
    }
    if (src != packed.data()) packed.swap(tmp);
    return Kind::kPacked;
  }

  // kByteKeysFrom .. kShortKeysUpTo entries: 24-bit keys in three scatter passes of 8-bit digits. A pass's
  // 256 buckets keep its write frontier (256 cache lines, 16 KB) in L1, where the 2,048 of two 11-bit passes
  // (128 KB) missed it on every write; a write prefetch kPrefetch entries ahead in the bucket hides the
  // rest. The keys come from their own vectorised loop (byte_keys), the histograms from the stored keys,
  // and the first pass packs (key << 32 | position) as it scatters. 19,900-entry rows (200-condition RDMs)
  // on one core of a 2-core Xeon (AVX-512) under host load: the sort and ranking alone, in a standalone copy,
  // 7.0-8.0 against 8.5-9.9 ns per entry across builds (-13% to -27%); rsa_centered_ranks of 1,000 such
  // rows, best of 7 alternating runs, 253 against 288 ms, and 10 subjects' time_resolved_rsa 265 against
  // 302 ms. Ranks are the values' order whatever the passes: the same as before, bit for bit.
  Kind sort_bytes(const T* x, int64_t n, double lo, double range) {
    constexpr int kD = 8;
    constexpr uint32_t kB = 1u << kD, kM = kB - 1;
    constexpr int64_t kPrefetch = 8;
    const double top = static_cast<double>((uint32_t{1} << (3 * kD)) - 1);
    const double scale = top / range;
    if (!std::isfinite(scale)) return Kind::kRadix;
    keys.resize(n);
    packed.resize(n + kPrefetch), tmp.resize(n + kPrefetch);  // a prefetch past the last entry stays inside
    uint32_t* kb = keys.data();
    byte_keys(x, n, lo, scale, top, kb);
    hist.assign(3 * kB, 0);
    uint32_t* h = hist.data();
    for (int64_t k = 0; k < n; ++k) {
      const uint32_t key = kb[k];
      ++h[key & kM];
      ++h[kB + ((key >> kD) & kM)];
      ++h[2 * kB + (key >> (2 * kD))];
    }
    for (int p = 0; p < 3; ++p) {
      uint32_t sum = 0;
      for (uint32_t b = 0; b < kB; ++b) {
        const uint32_t c = h[p * kB + b];
        h[p * kB + b] = sum;
        sum += c;
      }
    }
    uint64_t* a = packed.data();
    uint64_t* t = tmp.data();
    for (int64_t k = 0; k < n; ++k) {
      const uint32_t key = kb[k];
      const uint32_t q = h[key & kM]++;
      __builtin_prefetch(t + q + kPrefetch, 1, 3);
      t[q] = (static_cast<uint64_t>(key) << 32) | static_cast<uint64_t>(k);
    }
    for (int64_t k = 0; k < n; ++k) {
      const uint32_t q = h[kB + ((t[k] >> (32 + kD)) & kM)]++;
      __builtin_prefetch(a + q + kPrefetch, 1, 3);
      a[q] = t[k];
    }
    for (int64_t k = 0; k < n; ++k) {
      const uint32_t q = h[2 * kB + (a[k] >> (32 + 2 * kD))]++;
      __builtin_prefetch(t + q + kPrefetch, 1, 3);
      t[q] = a[k];
    }
    packed.swap(tmp);
    return Kind::kPacked;
  }
};

// out[position(k)] = average rank - shift for sorted entries k = 0 .. n-1 seen through value(k) and
// position(k); returns the sum over tie groups of (t^3 - t), exactly. Sorted entries i .. j-1 with
// equal values are one tie group: ranks i+1 .. j, average (i + 1 + j) / 2 (int64: exact at any n).
template <typename V, typename P, typename O>
Wide write_ranks(V value, P position, int64_t n, double shift, O* out) {
  Wide ties = 0;
  int64_t i = 0;
  while (i < n) {
    if (i + 1 == n || value(i + 1) != value(i)) {  // almost always: no tie
      out[position(i)] = static_cast<O>(static_cast<double>(i + 1) - shift);
      ++i;
      continue;
    }
    int64_t j = i + 2;
    while (j < n && value(j) == value(i)) ++j;
    const O r = static_cast<O>(static_cast<double>(i + 1 + j) * 0.5 - shift);
    for (int64_t k = i; k < j; ++k) out[position(k)] = r;
    ties += static_cast<Wide>(j - i) * (j - i) * (j - i) - (j - i);
    i = j;
  }
  return ties;
}

// out[k] = average rank of x[k] - shift for one row; returns the sum of squared centred average ranks,
// ((n^3 - n) - sum over tie groups of (t^3 - t)) / 12, from an exact integer numerator (the two terms
// nearly cancel when one value fills almost the whole row), so it carries one rounding.
// known: the row's row_range, where the caller has it (nullptr: found here).
template <typename T, typename O>
double row_ranks(RowSorter<T>& sorter, const T* x, int64_t n, double shift, O* out,
                 const RowRange<T>* known = nullptr) {
  Wide ties = 0;
  using Kind = typename RowSorter<T>::Kind;
  const Kind kind = known == nullptr ? sorter.sort(x, n)
                    : known->nan     ? Kind::kNaN
                                     : sorter.sort(x, n, known->lo, known->hi);
  switch (kind) {
    case RowSorter<T>::Kind::kNaN: {
      for (int64_t k = 0; k < n; ++k) out[k] = static_cast<O>(std::nan(""));
      return std::nan("");
    }
    case RowSorter<T>::Kind::kConstant: {  // in any order: one tie group
      ties = write_ranks([x](int64_t k) { return x[k]; }, [](int64_t k) { return k; }, n, shift, out);
      break;
    }
    case RowSorter<T>::Kind::kEntries: {
      const Entry<T>* s = sorter.entries.data();
      ties = write_ranks([s](int64_t k) { return s[k].v; }, [s](int64_t k) { return s[k].i; }, n, shift, out);
      break;
    }
    case RowSorter<T>::Kind::kPacked: {
      // runs of equal keys: almost always of length 1 (rank i + 1); longer ones are sorted by value
      const uint64_t* s = sorter.packed.data();
      int64_t i = 0;
      while (i < n) {
        const uint64_t key = s[i] >> 32;
        int64_t j = i + 1;
        while (j < n && (s[j] >> 32) == key) ++j;
        if (j == i + 1) {
          out[static_cast<uint32_t>(s[i])] = static_cast<O>(static_cast<double>(i + 1) - shift);
          i = j;
          continue;
        }
        const uint64_t* run_s = s + i;
        const auto pos = [run_s](int64_t k) { return static_cast<uint32_t>(run_s[k]); };
        const auto val = [x, pos](int64_t k) { return x[pos(k)]; };
        int64_t same = 1;
        while (same < j - i && val(same) == val(0)) ++same;
        const double run_shift = shift - static_cast<double>(i);
        if (same == j - i) {  // one tie group (heavily tied data): ranked in place, no copy, no sort
          ties += write_ranks(val, pos, j - i, run_shift, out);
        } else {
          auto& run = sorter.entries;
          run.resize(j - i);
          for (int64_t k = 0; k < j - i; ++k) run[k] = {val(k), pos(k)};
          sort_by_value(run);
          const Entry<T>* r = run.data();
          ties += write_ranks([r](int64_t k) { return r[k].v; }, [r](int64_t k) { return r[k].i; }, j - i, run_shift,
                              out);
        }
        i = j;
      }
      break;
    }
    case RowSorter<T>::Kind::kRadix: {
      sorter.radix.sort(x, n);
      const int64_t* idx = sorter.radix.idx.data();
      ties = write_ranks([x, idx](int64_t k) { return x[idx[k]]; }, [idx](int64_t k) { return idx[k]; }, n,
                         shift, out);
      break;
    }
  }
  return static_cast<double>(static_cast<Wide>(n) * n * n - n - ties) / 12.0;
}

// Below this much work a parallel region costs more than it saves (thread wake-up, and on a busy machine
// a descheduled thread stalls the barrier).
constexpr int64_t kParallelWork = int64_t{1} << 16;

// Ranks of each row, optionally centred ((n + 1) / 2 is the mean of average ranks, exactly) and scaled
// to unit norm, written in O's dtype.
template <typename T, typename O>
void rank_rows(const T* x, O* out, int64_t rows, int64_t n, bool center, bool normalize) {
#pragma omp parallel if (rows > 1 && rows * n > kParallelWork)
  {
    RowSorter<T> sorter;
#pragma omp for schedule(dynamic, 1)
    for (int64_t row = 0; row < rows; ++row) {
      O* o = out + row * n;
      const double ss = row_ranks(sorter, x + row * n, n, center ? static_cast<double>(n + 1) * 0.5 : 0.0, o);
      if (center && normalize) {
        // a constant row has no Spearman correlation: NaN, which the caller turns into an error
        const double scale = ss > 0 ? 1.0 / std::sqrt(ss) : std::nan("");
        for (int64_t k = 0; k < n; ++k) o[k] = static_cast<O>(static_cast<double>(o[k]) * scale);
      }
    }
  }
}

template <typename O>
void rank_dispatch(const at::Tensor& xc, at::Tensor& out, int64_t rows, int64_t n, bool center, bool normalize) {
  O* o = out.data_ptr<O>();
  switch (xc.scalar_type()) {
    case at::kDouble: rank_rows(xc.data_ptr<double>(), o, rows, n, center, normalize); break;
    case at::kFloat: rank_rows(xc.data_ptr<float>(), o, rows, n, center, normalize); break;
    case at::kLong: rank_rows(xc.data_ptr<int64_t>(), o, rows, n, center, normalize); break;
    case at::kInt: rank_rows(xc.data_ptr<int32_t>(), o, rows, n, center, normalize); break;
    default: TORCH_CHECK(false, "unreachable: ranks_impl admits no other dtype");
  }
}

at::Tensor ranks_impl(const char* op, const at::Tensor& x, bool center, bool normalize, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": x must have at least 1 dim, got a 0-dim tensor");
  const auto t = x.scalar_type();
  TORCH_CHECK_TYPE(t == at::kDouble || t == at::kFloat || t == at::kLong || t == at::kInt, op,
                   ": x must be float64, float32, int64 or int32, got ", t);
  TORCH_CHECK_TYPE(dtype == at::kDouble || dtype == at::kFloat, op, ": dtype must be float64 or float32, got ",
                   dtype);
  const auto xc = x.contiguous();
  auto out = at::empty(x.sizes(), x.options().dtype(dtype));
  const int64_t n = x.size(-1);
  if (x.numel() == 0) return out;
  const int64_t rows = x.numel() / n;
  if (dtype == at::kDouble) {
    rank_dispatch<double>(xc, out, rows, n, center, normalize);
  } else {
    rank_dispatch<float>(xc, out, rows, n, center, normalize);
  }
  return out;
}

at::Tensor rank_cpu(const at::Tensor& x) { return ranks_impl("rsa_rank", x, false, false, at::kDouble); }

at::Tensor centered_ranks_cpu(const at::Tensor& x, bool normalize, at::ScalarType dtype) {
  return ranks_impl("rsa_centered_ranks", x, true, normalize, dtype);
}

// Condensed RDMs straight from the patterns, for few features: per batch element the patterns are
// normalised (correlation / cosine) or column-centred (euclidean) into a (p, n) transposed copy
// (direct_transpose), then blocks of kRows rows are computed against all later conditions in register
// tiles (direct_rows). method: 0 correlation, 1 cosine, 2 euclidean.
constexpr int64_t kRows = 4;

// Register tiles: kRows rows x two vectors of columns, written with GCC vector types so that the eight
// accumulators stay in registers whatever the width (left to the auto-vectoriser, a tile of two vectors per
// row was kept in memory by GCC for float32, 3.5-4.7x slower, and its float64 tiles shuffled each row's
// value into place: 1.99 against 1.36 ns per entry at 17 features). Eight independent FMA chains keep both
// FMA units busy (four cycles of latency). 32-byte vectors for the baseline and x86-64-v3 builds, 64-byte on
// CPUs with AVX-512 (chosen at run time: a float64 RDM of 200 x 17 in 0.84 against 1.36 ns per entry, float32
// 0.55 against 0.81, one thread of a 2-core Xeon); every entry is the same chain of FMAs over k in the same
// order, so the AVX2 and AVX-512 tiles give the same bits (the baseline build, without FMA, rounds each
// product). kMaxTile: the widest tile's columns, which the padding covers.
constexpr int64_t kMaxTile = 2 * 64 / static_cast<int64_t>(sizeof(float));
// The z layout of one pattern set: p rows of n conditions, each row padded with zeros to zstride(n)
// so that the register tiles below may read past the last condition.
template <typename T>
int64_t zstride(int64_t n) {
  return n + kMaxTile;
}

// What direct_transpose found in one pattern set: the first pattern (condition) whose distances are
// undefined, if any, and the power of two the set was scaled by.
enum class PatternIssue { kNone, kNonFinite, kConstant, kZero };
struct PreparedSet {
  PatternIssue issue = PatternIssue::kNone;
  int64_t pattern = -1;
  int exponent = 0;  // euclidean: the set was multiplied by 2^-exponent, so its distances by 4^-exponent
};

// e such that 2^-e brings maxabs into [0.5, 1) where sums of `terms` squares of values up to maxabs could
// overflow R, or lose to underflow products above eps * maxabs^2 (the bounds of the Python API's
// _safe_magnitudes); 0 where they cannot, so that ordinary data is computed exactly as given. |e| <= 1022
// keeps 2^-e a normal double.
template <typename R>
int scale_exponent(double maxabs, int64_t terms) {
  using L = std::numeric_limits<R>;
  const double t = static_cast<double>(terms);
  const double lo = std::sqrt(t * static_cast<double>(L::min()) / static_cast<double>(L::epsilon()));
  const double hi = std::sqrt(static_cast<double>(L::max()) / (32.0 * t));
  if (maxabs == 0.0 || (maxabs >= lo && maxabs <= hi)) return 0;
  int e = 0;
  std::frexp(maxabs, &e);
  return std::clamp(e, -1022, 1022);
}

// The first of `rows` rows of p values that holds NaN or inf, or -1. Called only when a sum over the values
// is not finite (NaN and inf reach it), which finite values can also cause by overflowing.
template <typename T>
int64_t first_non_finite(const T* x, int64_t rows, int64_t p) {
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t k = 0; k < p; ++k) {
      if (!std::isfinite(static_cast<double>(x[i * p + k]))) return i;
    }
  }
  return -1;
}

// One pattern set xb (n, p) -> z (p, zstride(n)): normalised rows (correlation: centred first; cosine)
// or column-centred (euclidean), transposed so that the pair loops read contiguous conditions.
// Correlation and cosine distances do not depend on a pattern's scale, so a pattern whose sums of squares
// would overflow or underflow in double is multiplied by an exact power of two first (exact at any finite
// magnitude); euclidean distances of x * 2^-e are 4^-e times those of x, so one e serves the whole set and
// the caller scales the distances back. Exceptions cannot leave the OpenMP loops that call this, so a
// pattern without distances (NaN / inf; constant for correlation; all zeros for cosine) is returned for
// the caller to raise. For correlation and cosine the range that decides both comes out of the pass that
// was already there (the mean's; cosine's sum of squares); euclidean's, over the whole set, is one
// contiguous pass before the column passes.
template <typename T>
PreparedSet direct_transpose(const T* xb, T* z, int64_t n, int64_t p, int64_t method) {
  const int64_t zs = zstride<T>(n);
  for (int64_t k = 0; k < p; ++k) std::fill(z + k * zs + n, z + (k + 1) * zs, T(0));
  PreparedSet set;
  const auto refuse = [&set](PatternIssue issue, int64_t i) {
    set.issue = issue;
    set.pattern = i;
    return set;
  };
  if (method == 2) {
    double maxabs = 0.0, sum = 0.0;
    for (int64_t u = 0; u < n * p; ++u) {
      const double v = xb[u];
      maxabs = std::max(maxabs, std::fabs(v));
      sum += v;
    }
    if (!std::isfinite(sum)) {
      const int64_t bad = first_non_finite(xb, n, p);
      if (bad >= 0) return refuse(PatternIssue::kNonFinite, bad);
    }
    set.exponent = scale_exponent<T>(maxabs, p);
    const double f = std::ldexp(1.0, -set.exponent);
    for (int64_t k = 0; k < p; ++k) {
      double mean = 0.0;
      for (int64_t i = 0; i < n; ++i) mean += xb[i * p + k] * f;
      mean /= static_cast<double>(n);
      for (int64_t i = 0; i < n; ++i) z[k * zs + i] = static_cast<T>(xb[i * p + k] * f - mean);
    }
    return set;
  }
  for (int64_t i = 0; i < n; ++i) {
    const T* row = xb + i * p;
    double lo = row[0], hi = row[0], sum = 0.0, sq = 0.0;
    for (int64_t k = 0; k < p; ++k) {
      const double v = row[k];
      lo = std::min(lo, v);
      hi = std::max(hi, v);
      sum += v;
      sq += v * v;
    }
    if (!std::isfinite(sum + sq) && first_non_finite(row, 1, p) == 0) return refuse(PatternIssue::kNonFinite, i);
    if (method == 0 && lo == hi) return refuse(PatternIssue::kConstant, i);
    if (method == 1 && lo == 0.0 && hi == 0.0) return refuse(PatternIssue::kZero, i);
    const int e = scale_exponent<double>(std::max(hi, -lo), p);
    const double f = std::ldexp(1.0, -e);
    if (e != 0) {  // extreme magnitudes only: the sums again, of the scaled values
      sum = 0.0, sq = 0.0;
      for (int64_t k = 0; k < p; ++k) {
        const double v = row[k] * f;
        sum += v;
        sq += v * v;
      }
    }
    const double mean = method == 0 ? sum / static_cast<double>(p) : 0.0;
    // correlation: the differences row - mean are exact for values near the mean, but the mean of values
    // far from zero against their spread (float64 near 1e15 varying by 1) is off by a share of that
    // spread; the mean of the differences takes it out (as torch_chunked's _recentre), before the sums
    double resid = 0.0;
    if (method == 0) {
      for (int64_t k = 0; k < p; ++k) resid += row[k] * f - mean;
      resid /= static_cast<double>(p);
    }
    double ss = sq;  // cosine's; correlation's is taken around the mean (no cancellation)
    if (method == 0) {
      ss = 0.0;
      for (int64_t k = 0; k < p; ++k) {
        const double v = (row[k] * f - mean) - resid;
        ss += v * v;
      }
    }
    const double inv = 1.0 / std::sqrt(ss);
    for (int64_t k = 0; k < p; ++k) z[k * zs + i] = static_cast<T>(((row[k] * f - mean) - resid) * inv);
  }
  return set;
}

// Raises the ValueError for the first pattern set that direct_transpose refused, naming x and the pattern.
void check_prepared(const char* op, const std::vector<PreparedSet>& sets) {
  for (size_t b = 0; b < sets.size(); ++b) {
    const PreparedSet& s = sets[b];
    TORCH_CHECK_VALUE(s.issue != PatternIssue::kNonFinite, op, ": x[", b, ", ", s.pattern,
                      "] contains NaN or inf; expected finite values");
    TORCH_CHECK_VALUE(s.issue != PatternIssue::kConstant, op, ": x[", b, ", ", s.pattern,
                      "] is a constant pattern; its correlation distance (method 0) is undefined, expected at ",
                      "least two distinct values per pattern");
    TORCH_CHECK_VALUE(s.issue != PatternIssue::kZero, op, ": x[", b, ", ", s.pattern,
                      "] is an all-zero pattern; its cosine distance (method 1) is undefined, expected a nonzero ",
                      "value in every pattern");
  }
}

// Distances of rows i0 .. i0+kRows-1 (those < n-1) to all later conditions, from z (p, zstride(n)),
// written into the condensed RDM `out` (each row's entries are contiguous there). Register tiles of
// kRows x 2 vectors of VB bytes run over all p features before one store, so the loop is bound by
// arithmetic, not by reloading accumulators; each sum still runs over k in order.
template <typename T, int VB, bool kEuclid>
inline __attribute__((always_inline)) void direct_rows_impl(const T* z, int64_t n, int64_t p, int64_t i0, T* out) {
  typedef T V __attribute__((vector_size(VB)));
  constexpr int64_t W = VB / static_cast<int64_t>(sizeof(T)), J = 2 * W;
  static_assert(J <= kMaxTile, "the padding of z covers the widest tile");
  const int64_t zs = zstride<T>(n);
  const int64_t rows = std::min<int64_t>(kRows, n - 1 - i0);
  const int64_t m = n - i0 - 1;  // columns j = i0 + 1 .. n - 1, shared by the block's rows
  T* orow[kRows];
  for (int64_t r = 0; r < kRows; ++r) {
    const int64_t i = i0 + std::min<int64_t>(r, rows - 1);
    orow[r] = out + i * n - i * (i + 1) / 2 - r;  // row i0+r's entry for block column c is orow[r][c]
  }
  const T inv_p = T(1) / static_cast<T>(p);
  for (int64_t c0 = 0; c0 < m; c0 += J) {
    V a0[kRows], a1[kRows];
    for (int64_t r = 0; r < kRows; ++r) a0[r] = a1[r] = V{};
    const T* zk = z + i0;  // rows past n-1 read padding or later rows; their tiles are not stored
    const T* v = z + i0 + 1 + c0;
    for (int64_t k = 0; k < p; ++k, zk += zs, v += zs) {
      V v0, v1;
      std::memcpy(&v0, v, VB);
      std::memcpy(&v1, v + W, VB);
      for (int64_t r = 0; r < kRows; ++r) {
        const T zi = zk[r];
        if constexpr (kEuclid) {
          const V d0 = zi - v0, d1 = zi - v1;
          a0[r] += d0 * d0;
          a1[r] += d1 * d1;
        } else {
          a0[r] += zi * v0;
          a1[r] += zi * v1;
        }
      }
    }
    for (int64_t r = 0; r < kRows; ++r) {
      if constexpr (kEuclid) {
        a0[r] *= inv_p;
        a1[r] *= inv_p;
      } else {
        a0[r] = T(1) - a0[r];
        a1[r] = T(1) - a1[r];
      }
    }
    const int64_t cend = std::min<int64_t>(J, m - c0);
    if (rows == kRows && c0 >= kRows - 1 && cend == J) {  // a whole tile: every row's columns are stored
      for (int64_t r = 0; r < kRows; ++r) {
        std::memcpy(orow[r] + c0, &a0[r], VB);
        std::memcpy(orow[r] + c0 + W, &a1[r], VB);
      }
      continue;
    }
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t jj = (c0 >= r ? 0 : r - c0); jj < cend; ++jj) {  // row i0+r starts at column c = r
        orow[r][c0 + jj] = jj < W ? a0[r][jj] : a1[r][jj - W];
      }
    }
  }
}

template <typename T, int VB>
inline __attribute__((always_inline)) void direct_rows_any(const T* z, int64_t n, int64_t p, int64_t method,
                                                           int64_t i0, T* out) {
  if (method == 2) {
    direct_rows_impl<T, VB, true>(z, n, p, i0, out);
  } else {
    direct_rows_impl<T, VB, false>(z, n, p, i0, out);
  }
}
FASTALIGN_CLONES void direct_rows_f64(const double* z, int64_t n, int64_t p, int64_t method, int64_t i0, double* out) {
  direct_rows_any<double, 32>(z, n, p, method, i0, out);
}
FASTALIGN_CLONES void direct_rows_f32(const float* z, int64_t n, int64_t p, int64_t method, int64_t i0, float* out) {
  direct_rows_any<float, 32>(z, n, p, method, i0, out);
}
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define FASTALIGN_AVX512_ROWS 1
__attribute__((target("arch=x86-64-v4"))) void direct_rows_f64_v4(const double* z, int64_t n, int64_t p,
                                                                  int64_t method, int64_t i0, double* out) {
  direct_rows_any<double, 64>(z, n, p, method, i0, out);
}
__attribute__((target("arch=x86-64-v4"))) void direct_rows_f32_v4(const float* z, int64_t n, int64_t p,
                                                                  int64_t method, int64_t i0, float* out) {
  direct_rows_any<float, 64>(z, n, p, method, i0, out);
}
// Whether this CPU runs the AVX-512 tiles (asked once); FASTALIGN_NO_AVX512=1 keeps the AVX2 ones (the tests
// hold the two to the same bits).
bool avx512_rows() {
  static const bool yes = [] {
    const char* off = std::getenv("FASTALIGN_NO_AVX512");
    if (off != nullptr && std::strcmp(off, "1") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("x86-64-v4") != 0;
  }();
  return yes;
}
#endif
inline void direct_rows(const double* z, int64_t n, int64_t p, int64_t method, int64_t i0, double* out) {
#ifdef FASTALIGN_AVX512_ROWS
  if (avx512_rows()) return direct_rows_f64_v4(z, n, p, method, i0, out);
#endif
  direct_rows_f64(z, n, p, method, i0, out);
}
inline void direct_rows(const float* z, int64_t n, int64_t p, int64_t method, int64_t i0, float* out) {
#ifdef FASTALIGN_AVX512_ROWS
  if (avx512_rows()) return direct_rows_f32_v4(z, n, p, method, i0, out);
#endif
  direct_rows_f32(z, n, p, method, i0, out);
}

template <typename T>
void rdm_direct(const T* x, T* out, int64_t batch, int64_t n, int64_t p, int64_t method) {
  const int64_t k_total = n * (n - 1) / 2;
  const int64_t zsize = p * zstride<T>(n);
  std::unique_ptr<T[]> zt(new T[static_cast<size_t>(batch * zsize)]);  // fully written below
  const bool parallel = batch * n * n * p > kParallelWork;
  std::vector<PreparedSet> sets(static_cast<size_t>(batch));
#pragma omp parallel for schedule(static) if (parallel && batch > 1)
  for (int64_t b = 0; b < batch; ++b) sets[b] = direct_transpose(x + b * n * p, zt.get() + b * zsize, n, p, method);
  check_prepared("rsa_rdm_direct", sets);
  const int64_t blocks = (n - 1 + kRows - 1) / kRows;
#pragma omp parallel for collapse(2) schedule(dynamic, 4) if (parallel)
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t blk = 0; blk < blocks; ++blk) {
      direct_rows(zt.get() + b * zsize, n, p, method, blk * kRows, out + b * k_total);
    }
  }
  // euclidean sets that were scaled (extreme magnitudes only) get their distances back, exactly; one that
  // exceeds T's range has no representable RDM
  for (int64_t b = 0; b < batch; ++b) {
    const int e = sets[b].exponent;
    if (e == 0) continue;
    T* o = out + b * k_total;
    bool finite = true;
    for (int64_t k = 0; k < k_total; ++k) {
      o[k] = std::ldexp(o[k], 2 * e);
      finite &= std::isfinite(o[k]);
    }
    TORCH_CHECK_VALUE(finite, "rsa_rdm_direct: the euclidean distances of x[", b, "] exceed the largest ",
                      c10::CppTypeToScalarType<T>::value, " (", std::numeric_limits<T>::max(),
                      "); expected patterns whose distances fit (rescale them, or use float64)");
  }
}

at::Tensor rdm_direct_cpu(const at::Tensor& x, int64_t method) {
  TORCH_CHECK_VALUE(x.device().is_cpu(), "rsa_rdm_direct: x must be a CPU tensor, got ", x.device());
  TORCH_CHECK_VALUE(x.dim() == 3, "rsa_rdm_direct: x must be (B, n, p), got ", x.sizes());
  TORCH_CHECK_VALUE(method >= 0 && method <= 2, "rsa_rdm_direct: method must be 0, 1 or 2, got ", method);
  const int64_t batch = x.size(0), n = x.size(1), p = x.size(2);
  TORCH_CHECK_VALUE(n >= 2 && p >= 1, "rsa_rdm_direct: need n >= 2 conditions and p >= 1 features, got ",
                    x.sizes());
  const auto xc = x.contiguous();
  auto out = at::empty({batch, n * (n - 1) / 2}, x.options());
  switch (x.scalar_type()) {
    case at::kDouble: rdm_direct(xc.data_ptr<double>(), out.data_ptr<double>(), batch, n, p, method); break;
    case at::kFloat: rdm_direct(xc.data_ptr<float>(), out.data_ptr<float>(), batch, n, p, method); break;
    default: TORCH_CHECK_TYPE(false, "rsa_rdm_direct: x must be float64 or float32, got ", x.scalar_type());
  }
  return out;
}

// sum over k < n of term(k) in 8 independent partial sums: a single accumulator serialises on the add
// latency (4 cycles per element); eight chains let the loop vectorise and pipeline.
template <typename F>
double sum_lanes(int64_t n, F term) {
  constexpr int64_t kLanes = 8;
  double s[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int64_t u = 0; u < kLanes; ++u) s[u] += term(k + u);
  }
  for (; k < n; ++k) s[0] += term(k);
  double t = 0.0;
  for (int64_t u = 0; u < kLanes; ++u) t += s[u];
  return t;
}

// The model dot products of a block of R compare vectors: out[r][m] = <v[r], w[m]> * scale[r],
// each summed exactly as sum_lanes sums it (eight lanes over k in steps of 8, the tail into lane 0, then
// the lanes in order), so a block gives the bits one vector at a time gives. Chunks of kDotChunk pairs
// (a multiple of 8) keep the block's vectors in cache while every model's chunk streams past once: each
// model vector is read once per R compare vectors instead of once per vector (44 models of 19,900 pairs
// are 7 MB: out of L2, so one vector at a time was bound by that stream); 1,024 pairs (4 vectors: 32 KB)
// stay in a 48 KB L1, where 2,048 did not. On CPUs with AVX-512 a register tile also takes 4 models at once
// (dot_tile), so each loaded chunk of a vector serves 4 models. 400 RDMs of 200 conditions against 44 models
// (Pearson, one thread of a 2-core Xeon): the dot products in 27 against 47 ms (AVX2 tiles: 33). Contraction
// into FMA is off (GCC and clang), so every build adds and multiplies as the baseline does and all give the
// same bits.
constexpr int64_t kDotRows = 4;
constexpr int64_t kDotChunk = 1024;
// Above this many pairs a thread holds one compare vector, not kDotRows (4 x 2 MB at this bound; the
// chunking, not the vectors' length, keeps a block in cache).
constexpr int64_t kDotBlockPairs = int64_t{1} << 18;

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif
// The same eight lanes as two 4-double vectors, for the builds with 16 registers (baseline, x86-64-v3), where
// GCC's lowering of a 64-byte vector type spilled the accumulators (2.6x slower).
typedef double Lanes4 __attribute__((vector_size(32)));

inline Lanes4 load4(const double* p) {
  Lanes4 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// One model's tile over pairs [k0, k1) for the builds with 16 registers: R vectors x the 8 lanes as two halves.
template <int R>
inline __attribute__((always_inline)) void dot_tile_narrow(const double* const* vr, const double* w, int64_t n,
                                                           int64_t mm, int64_t models, int64_t k0, int64_t k1,
                                                           double* acc) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  const double* __restrict wm = w + mm * n;
  Lanes4 lo[R], hi[R];
  for (int r = 0; r < R; ++r) {
    lo[r] = load4(acc + (r * models + mm) * 8);
    hi[r] = load4(acc + (r * models + mm) * 8 + 4);
  }
  for (int64_t k = k0; k < k1; k += 8) {
    const Lanes4 w_lo = load4(wm + k), w_hi = load4(wm + k + 4);
    for (int r = 0; r < R; ++r) {
      lo[r] += load4(vr[r] + k) * w_lo;
      hi[r] += load4(vr[r] + k + 4) * w_hi;
    }
  }
  for (int r = 0; r < R; ++r) {
    std::memcpy(acc + (r * models + mm) * 8, &lo[r], sizeof(Lanes4));
    std::memcpy(acc + (r * models + mm) * 8 + 4, &hi[r], sizeof(Lanes4));
  }
}

// Eight lanes as one 64-byte vector (GCC vector extensions: element-wise, so each lane adds in the order
// sum_lanes does; the x86-64-v3 build runs it as two 32-byte halves, the baseline ISA as four SSE2 quarters).
typedef double Lanes8 __attribute__((vector_size(64)));

// One register tile of dot_block: R compare vectors x MB models over pairs [k0, k1) (a multiple of 8 long),
// the R * MB eight-lane sums carried in acc between chunks. Each model's chunk is loaded once for the R
// vectors and each vector's once for the MB models: with R = MB = 4 (AVX-512: 16 accumulators of the 32
// registers) a step of 8 pairs loads 8 vectors for 16 multiplies and adds, where one model at a time
// loaded 5 for 4.
template <int R, int MB>
inline __attribute__((always_inline)) void dot_tile(const double* const* vr, const double* w, int64_t n, int64_t m0,
                                                    int64_t models, int64_t k0, int64_t k1, double* acc) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  Lanes8 a[R][MB];
  const double* wm[MB];
  for (int j = 0; j < MB; ++j) wm[j] = w + (m0 + j) * n;
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < MB; ++j) std::memcpy(&a[r][j], acc + (r * models + m0 + j) * 8, sizeof(Lanes8));
  }
  for (int64_t k = k0; k < k1; k += 8) {
    Lanes8 wv[MB];
    for (int j = 0; j < MB; ++j) std::memcpy(&wv[j], wm[j] + k, sizeof(Lanes8));
    for (int r = 0; r < R; ++r) {
      Lanes8 vv;
      std::memcpy(&vv, vr[r] + k, sizeof(Lanes8));
      for (int j = 0; j < MB; ++j) a[r][j] += vv * wv[j];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < MB; ++j) std::memcpy(acc + (r * models + m0 + j) * 8, &a[r][j], sizeof(Lanes8));
  }
}

// MB (<= 4): models per 64-byte register tile, the last tile of a chunk taking the models left over; MB = 0:
// one model per tile of two 32-byte halves (dot_tile_narrow).
template <int R, int MB>
inline __attribute__((always_inline)) void dot_block_impl(const double* const* v, const double* scale, const double* w,
                                                          int64_t models, int64_t n, double* acc,
                                                          double* const* out) {
#if defined(__clang__)
#pragma clang fp contract(off)
#endif
  constexpr int kLanes = 8;
  const int64_t main = n - n % kLanes;
  std::fill(acc, acc + static_cast<int64_t>(R) * models * kLanes, 0.0);
  const double* vr[R];
  for (int r = 0; r < R; ++r) vr[r] = v[r];
  for (int64_t k0 = 0; k0 < main; k0 += kDotChunk) {
    const int64_t k1 = std::min(main, k0 + kDotChunk);
    if constexpr (MB == 0) {
      for (int64_t mm = 0; mm < models; ++mm) dot_tile_narrow<R>(vr, w, n, mm, models, k0, k1, acc);
    } else {
      int64_t m0 = 0;
      for (; m0 + MB <= models; m0 += MB) dot_tile<R, MB>(vr, w, n, m0, models, k0, k1, acc);
      const int64_t rest = models - m0;  // fewer than MB
      if constexpr (MB >= 4) {
        if (rest == 3) dot_tile<R, 3>(vr, w, n, m0, models, k0, k1, acc);
      }
      if constexpr (MB >= 3) {
        if (rest == 2) dot_tile<R, 2>(vr, w, n, m0, models, k0, k1, acc);
      }
      if constexpr (MB >= 2) {
        if (rest == 1) dot_tile<R, 1>(vr, w, n, m0, models, k0, k1, acc);
      }
    }
  }
  // the tail pairs (n mod 8) into lane 0, the lanes summed in order, times the vector's scale
  for (int r = 0; r < R; ++r) {
    for (int64_t mm = 0; mm < models; ++mm) {
      const double* wm = w + mm * n;
      double* sums = acc + (r * models + mm) * kLanes;
      for (int64_t k = main; k < n; ++k) sums[0] += vr[r][k] * wm[k];
      double t = 0.0;
      for (int u = 0; u < kLanes; ++u) t += sums[u];
      out[r][mm] = t * scale[r];
    }
  }
}

template <int MB>
inline __attribute__((always_inline)) void dot_block_any(int rows, const double* const* v, const double* scale,
                                                         const double* w, int64_t models, int64_t n, double* acc,
                                                         double* const* out) {
  switch (rows) {
    case 4: dot_block_impl<4, MB>(v, scale, w, models, n, acc, out); break;
    case 3: dot_block_impl<3, MB>(v, scale, w, models, n, acc, out); break;
    case 2: dot_block_impl<2, MB>(v, scale, w, models, n, acc, out); break;
    default: dot_block_impl<1, MB>(v, scale, w, models, n, acc, out); break;
  }
}

FASTALIGN_CLONES void dot_block_narrow(int rows, const double* const* v, const double* scale, const double* w,
                                       int64_t models, int64_t n, double* acc, double* const* out) {
  dot_block_any<0>(rows, v, scale, w, models, n, acc, out);
}
#ifdef FASTALIGN_AVX512_ROWS
__attribute__((target("arch=x86-64-v4"))) void dot_block_v4(int rows, const double* const* v, const double* scale,
                                                            const double* w, int64_t models, int64_t n, double* acc,
                                                            double* const* out) {
  dot_block_any<4>(rows, v, scale, w, models, n, acc, out);
}
#endif

// out[r][m] = <v[r], w[m]> * scale[r] for rows <= kDotRows vectors; the same bits on every build (each lane
// is the same chain of multiplies and adds, no contraction).
void dot_block(int rows, const double* const* v, const double* scale, const double* w, int64_t models, int64_t n,
               double* acc, double* const* out) {
#ifdef FASTALIGN_AVX512_ROWS
  if (avx512_rows()) return dot_block_v4(rows, v, scale, w, models, n, acc, out);
#endif
  dot_block_narrow(rows, v, scale, w, models, n, acc, out);
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif

// Fused RSA of pattern sets against prepared model vectors: for each of the B pattern sets, its RDM
// (direct method) goes into a per-thread buffer, is turned into its compare method's vector z (centred
// ranks, unit norm for spearman; centred / scaled values for pearson / cosine) and dotted with the M
// model vectors, kDotRows sets at a time (dot_block); no (B, K) RDM or rank tensor is ever stored (a
// thread holds kDotRows vectors). compare: 0 spearman, 1 rho_a, 2 pearson,
// 3 cosine. w: (M, K) float64, the models' vectors (ext_prepare). Returns (B, M) float64.
// How many eps times sqrt(terms) of their scale values may differ and still be equal up to rounding:
// fastalign/rsa/api.py _ROUNDING_ULPS, the same rule on every path.
constexpr double kRoundingUlps = 16.0;

// One pattern set xb (n, p)'s RDM for a comparison, in d (n(n-1)/2), through z (direct_transpose's layout):
// its direct distances, snapped as the composed path snaps them, and their range. Returns false where it
// has no statistic: `set` names a refused pattern (the caller raises), or every output of the set is
// `value` (NaN where undefined, which the Python API turns into an error naming the window; 0 for rho_a of
// a constant RDM). compare: as rdm_compare's.
template <typename T>
bool set_rdm(const T* xb, T* z, T* d, int64_t n, int64_t p, int64_t rdm_method, int64_t compare, PreparedSet& set,
             RowRange<T>& range, double& value) {
  const int64_t k_total = n * (n - 1) / 2;
  const int64_t blocks = (n - 1 + kRows - 1) / kRows;
  set = direct_transpose(xb, z, n, p, rdm_method);
  if (set.issue != PatternIssue::kNone) return false;
  for (int64_t blk = 0; blk < blocks; ++blk) direct_rows(z, n, p, rdm_method, blk * kRows, d);
  // Every compare method is invariant to a positive factor on the RDM, so a scaled euclidean set is
  // compared at its scale; distances that exceed T's range at the data's scale (d * 4^e, exactly)
  // have no statistic, as compare_rdms rejects such RDMs: NaN here becomes the caller's error.
  const T limit = std::ldexp(std::numeric_limits<T>::max(), -2 * set.exponent);  // inf for e < 0
  range = row_range(d, k_total);
  if (range.nan || range.hi > limit) {
    value = std::nan("");
    return false;
  }
  if (rdm_method <= 1) {
    // Correlation / cosine distances of patterns equal or opposite up to shift and scale (always so
    // with 2 features) are exactly 0 and 2, computed a few eps off in directions that differ between
    // backends, which then broke their ties differently: within the rounding of their sums they are
    // made exact, as the composed path does (common.exact_constants).
    const T near = static_cast<T>(kRoundingUlps * static_cast<double>(std::numeric_limits<T>::epsilon()) *
                                  std::sqrt(static_cast<double>(p)));
    if (range.lo <= near || range.hi >= T(2) - near) {
      for (int64_t k = 0; k < k_total; ++k) {
        const T v = d[k];
        d[k] = std::fabs(v) <= near ? T(0) : (std::fabs(v - T(2)) <= near ? T(2) : v);
      }
      range = row_range(d, k_total);
    }
  }
  // Distances that are equal (zero) in exact arithmetic come out a few eps apart for patterns that are
  // shifted or scaled copies: such an RDM is made exactly constant (zero), as the composed path does
  // (api._exact_constants), so the statistic is what the exact RDM gives (NaN where undefined, which
  // the caller names; 0 for rho_a), not a correlation of rounding noise. Sums of p terms of order 1
  // (correlation, cosine) or of the RDM's largest distance (euclidean).
  // In T, as common.exact_constants decides it on T tensors (a float32 tensor against a Python float
  // compares in float32, its products and differences round there): a float32 RDM that spreads exactly
  // the float32-rounded tolerance is constant there, and must be here too.
  const T top = range.hi, bottom = range.lo;
  const T maxabs = std::max(top, static_cast<T>(-bottom));
  const T ulps = static_cast<T>(kRoundingUlps * static_cast<double>(std::numeric_limits<T>::epsilon()) *
                                std::sqrt(static_cast<double>(p)));
  const T tolerance = rdm_method <= 1 ? ulps : static_cast<T>(ulps * maxabs);
  const bool zero = maxabs <= tolerance;
  const bool flat = static_cast<T>(top - bottom) <= tolerance;
  if (zero || (flat && compare != 3)) {
    // spearman/pearson of a constant RDM and cosine of a zero one are undefined; rho_a gives 0
    value = compare == 1 ? 0.0 : std::nan("");
    return false;
  }
  if (flat) std::fill(d, d + k_total, d[0]);  // cosine of an exactly constant RDM
  return true;
}

template <typename T>
void rdm_compare(const T* x, const double* w, double* out, int64_t batch, int64_t n, int64_t p, int64_t models,
                 int64_t rdm_method, int64_t compare) {
  const int64_t k_total = n * (n - 1) / 2;
  std::vector<PreparedSet> sets(static_cast<size_t>(batch));
  // kDotRows RDMs per group, fewer when that would leave threads without a group, one for large RDMs
#ifdef _OPENMP
  const int64_t threads = std::max(1, omp_get_max_threads());
#else
  const int64_t threads = 1;
#endif
  const int64_t per =
      k_total > kDotBlockPairs ? 1 : std::max<int64_t>(1, std::min<int64_t>(kDotRows, batch / threads));
  const int64_t groups = (batch + per - 1) / per;
#pragma omp parallel if (batch > 1 && batch * n * n * p > kParallelWork)
  {
    std::vector<T> z(static_cast<size_t>(p * zstride<T>(n))), d(static_cast<size_t>(k_total));
    std::vector<double> vs(static_cast<size_t>(per * k_total)), acc(static_cast<size_t>(per * models * 8));
    RowSorter<T> sorter;
#pragma omp for schedule(dynamic, 1)
    for (int64_t g = 0; g < groups; ++g) {
      // the group's compare vectors that need their model dot products (the others' outputs are set)
      const double* rows_v[kDotRows];
      double* rows_out[kDotRows];
      double rows_scale[kDotRows];
      int rows = 0;
      for (int64_t b = g * per; b < std::min(batch, (g + 1) * per); ++b) {
        double* v_data = vs.data() + rows * k_total;
        RowRange<T> range;
        double value = 0.0;
        if (!set_rdm(x + b * n * p, z.data(), d.data(), n, p, rdm_method, compare, sets[b], range, value)) {
          // a refused pattern is raised below, outside the parallel region; the others have their value
          if (sets[b].issue == PatternIssue::kNone) {
            for (int64_t mm = 0; mm < models; ++mm) out[b * models + mm] = value;
          }
          continue;
        }
        double scale = 1.0;
        if (compare <= 1) {
          // centred average ranks into v; spearman's norm from the tie groups, exactly
          const double ss =
              row_ranks(sorter, d.data(), k_total, static_cast<double>(k_total + 1) * 0.5, v_data, &range);
          // a constant RDM has no Spearman correlation: NaN, which the caller turns into an error
          if (compare == 0) scale = ss > 0 ? 1.0 / std::sqrt(ss) : std::nan("");
        } else {
          const T* dr = d.data();
          double* vr = v_data;
          const double mean =
              compare == 2 ? sum_lanes(k_total, [dr](int64_t k) { return static_cast<double>(dr[k]); }) / k_total : 0.0;
          for (int64_t k = 0; k < k_total; ++k) vr[k] = static_cast<double>(dr[k]) - mean;
          const double ss = sum_lanes(k_total, [vr](int64_t k) { return vr[k] * vr[k]; });
          // a constant (pearson) or all-zero (cosine) RDM has no statistic: NaN, turned into an error
          scale = ss > 0 ? 1.0 / std::sqrt(ss) : std::nan("");
        }
        rows_v[rows] = v_data;
        rows_out[rows] = out + b * models;
        rows_scale[rows] = scale;
        ++rows;
      }
      if (rows > 0) dot_block(rows, rows_v, rows_scale, w, models, k_total, acc.data(), rows_out);
    }
  }
  check_prepared("rsa_rdm_compare", sets);
}

at::Tensor rdm_compare_cpu(const at::Tensor& x, const at::Tensor& w, int64_t rdm_method, int64_t compare) {
  TORCH_CHECK_VALUE(x.device().is_cpu() && w.device().is_cpu(),
                    "rsa_rdm_compare: x and w must be CPU tensors, got ", x.device(), " and ", w.device());
  TORCH_CHECK_VALUE(x.dim() == 3, "rsa_rdm_compare: x must be (B, n, p), got ", x.sizes());
  TORCH_CHECK_VALUE(rdm_method >= 0 && rdm_method <= 2, "rsa_rdm_compare: rdm_method must be 0, 1 or 2, got ",
                    rdm_method);
  TORCH_CHECK_VALUE(compare >= 0 && compare <= 3, "rsa_rdm_compare: compare must be 0, 1, 2 or 3, got ", compare);
  const int64_t batch = x.size(0), n = x.size(1), p = x.size(2);
  TORCH_CHECK_VALUE(n >= 3 && p >= 1, "rsa_rdm_compare: need n >= 3 conditions and p >= 1 features, got ",
                    x.sizes());
  TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == n * (n - 1) / 2, "rsa_rdm_compare: w must be (M, ",
                    n * (n - 1) / 2, ") for x's ", n, " conditions, got ", w.sizes());
  TORCH_CHECK_TYPE(w.scalar_type() == at::kDouble, "rsa_rdm_compare: w must be float64, got ", w.scalar_type());
  const auto xc = x.contiguous();
  const auto wc = w.contiguous();
  auto out = at::empty({batch, w.size(0)}, x.options().dtype(at::kDouble));
  switch (x.scalar_type()) {
    case at::kDouble:
      rdm_compare(xc.data_ptr<double>(), wc.data_ptr<double>(), out.data_ptr<double>(), batch, n, p, w.size(0),
                  rdm_method, compare);
      break;
    case at::kFloat:
      rdm_compare(xc.data_ptr<float>(), wc.data_ptr<double>(), out.data_ptr<double>(), batch, n, p, w.size(0),
                  rdm_method, compare);
      break;
    default: TORCH_CHECK_TYPE(false, "rsa_rdm_compare: x must be float64 or float32, got ", x.scalar_type());
  }
  return out;
}

// Spearman RSA and the Spearman noise ceiling of (S, B, K) subject RDMs in one pass over each of the B
// points (time points, ROIs): each subject's RDM is ranked once into centred average ranks c_s (exact
// half-integers) with its norm from the tie groups (row_ranks); the pool of all subjects is ranked from
// the exact sum of the c_s and each leave-one-out pool from that sum minus c_s (rsatoolbox's pool_rdm of
// ranks: the mean of ranks orders as their sum does, ties included); upper[b] and lower[b] are the means
// over subjects of Spearman(pool, c_s) and Spearman(leave-one-out pool, c_s); sims[s, b, m] is the
// dot product of the subject's unit vector with model m's prepared vector w[m] (dot_block: the bits
// rsa_rdm_compare gives the same ranks). A pool whose ranks are constant has no Spearman correlation:
// its bound is NaN, which the Python API turns into an error naming the pool. The subjects' RDMs are
// finite and not constant (checked by the caller).
// subject_ranks: makes, once per thread, a callable (s, b, shift, out) -> the sum of squares of the centred
// ranks it wrote to out (K) for subject s's RDM at point b (NaN, with NaN ranks, where it has none).
template <typename MakeRanks>
void spearman_ceiling(MakeRanks subject_ranks, const double* w, double* sims, double* lower, double* upper,
                      int64_t s_n, int64_t b_n, int64_t k, int64_t models, int64_t work) {
  const double shift = static_cast<double>(k + 1) * 0.5;
#pragma omp parallel if (b_n > 1 && work > kParallelWork)
  {
    std::vector<double> c(static_cast<size_t>(s_n * k)), total(static_cast<size_t>(k)), pool(static_cast<size_t>(k)),
        loo(static_cast<size_t>(k)), scale(static_cast<size_t>(s_n)), acc(static_cast<size_t>(kDotRows * models * 8));
    RowSorter<double> sorter;
    auto ranks_of = subject_ranks();
#pragma omp for schedule(dynamic, 1)
    for (int64_t b = 0; b < b_n; ++b) {
      for (int64_t s = 0; s < s_n; ++s) {
        const double ss = ranks_of(s, b, shift, c.data() + s * k);
        scale[s] = ss > 0 ? 1.0 / std::sqrt(ss) : std::nan("");
      }
      std::copy(c.begin(), c.begin() + k, total.begin());
      for (int64_t s = 1; s < s_n; ++s) {
        const double* cs = c.data() + s * k;
        for (int64_t j = 0; j < k; ++j) total[j] += cs[j];  // half-integers: exact in any order
      }
      // Spearman of a pool's centred ranks p with c_s: <p, c_s> / (|p| |c_s|), |.| from the tie groups
      const auto pooled = [&](const double* values, int64_t s) {
        const double ss = row_ranks(sorter, values, k, shift, pool.data());
        const double* cs = c.data() + s * k;
        const double* p = pool.data();
        const double dot = sum_lanes(k, [p, cs](int64_t j) { return p[j] * cs[j]; });
        return ss > 0 ? dot / std::sqrt(ss) * scale[s] : std::nan("");
      };
      double up = 0.0, lo = 0.0;
      {
        const double ss = row_ranks(sorter, total.data(), k, shift, pool.data());
        const double inv = ss > 0 ? 1.0 / std::sqrt(ss) : std::nan("");
        const double* p = pool.data();
        for (int64_t s = 0; s < s_n; ++s) {
          const double* cs = c.data() + s * k;
          up += sum_lanes(k, [p, cs](int64_t j) { return p[j] * cs[j]; }) * inv * scale[s];
        }
      }
      for (int64_t s = 0; s < s_n; ++s) {
        const double* cs = c.data() + s * k;
        for (int64_t j = 0; j < k; ++j) loo[j] = total[j] - cs[j];
        lo += pooled(loo.data(), s);
      }
      upper[b] = up / static_cast<double>(s_n);
      lower[b] = lo / static_cast<double>(s_n);
      for (int64_t s0 = 0; s0 < s_n && models > 0; s0 += kDotRows) {
        const int rows = static_cast<int>(std::min<int64_t>(kDotRows, s_n - s0));
        const double* rows_v[kDotRows];
        double* rows_out[kDotRows];
        double rows_scale[kDotRows];
        for (int r = 0; r < rows; ++r) {
          rows_v[r] = c.data() + (s0 + r) * k;
          rows_out[r] = sims + ((s0 + r) * b_n + b) * models;
          rows_scale[r] = scale[s0 + r];
        }
        dot_block(rows, rows_v, rows_scale, w, models, k, acc.data(), rows_out);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> spearman_ceiling_cpu(const at::Tensor& x, const at::Tensor& w) {
  TORCH_CHECK_VALUE(x.device().is_cpu() && w.device().is_cpu(),
                    "rsa_spearman_ceiling: x and w must be CPU tensors, got ", x.device(), " and ", w.device());
  TORCH_CHECK_VALUE(x.dim() == 3 && x.size(0) >= 2 && x.size(2) >= 2,
                    "rsa_spearman_ceiling: x must be (S >= 2, B, K >= 2), got ", x.sizes());
  TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == x.size(2), "rsa_spearman_ceiling: w must be (M, ", x.size(2),
                    ") for x's ", x.size(2), " pairs, got ", w.sizes());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kDouble && w.scalar_type() == at::kDouble,
                   "rsa_spearman_ceiling: x and w must be float64, got ", x.scalar_type(), " and ", w.scalar_type());
  const auto xc = x.contiguous();
  const auto wc = w.contiguous();
  const int64_t s_n = x.size(0), b_n = x.size(1), k = x.size(2), models = w.size(0);
  auto opts = x.options().dtype(at::kDouble);
  auto sims = at::empty({s_n, b_n, models}, opts), lower = at::empty({b_n}, opts), upper = at::empty({b_n}, opts);
  if (b_n > 0) {
    const double* xp = xc.data_ptr<double>();
    const auto given = [xp, b_n, k] {
      return [xp, b_n, k, sorter = RowSorter<double>()](int64_t s, int64_t b, double shift, double* out) mutable {
        return row_ranks(sorter, xp + (s * b_n + b) * k, k, shift, out);
      };
    };
    spearman_ceiling(given, wc.data_ptr<double>(), sims.data_ptr<double>(), lower.data_ptr<double>(),
                     upper.data_ptr<double>(), s_n, b_n, k, models, s_n * b_n * k);
  }
  return {sims, lower, upper};
}

// rsa_spearman_ceiling of the RDMs of (S, B, n, p) pattern sets (S subjects' windows at B points), each
// computed into a per-thread buffer as rsa_rdm_compare computes it (set_rdm) and ranked there: no (S, B, K)
// RDMs are stored. A set without a Spearman statistic (a refused pattern, distances beyond the dtype's
// range, a constant RDM) has NaN ranks, so its point's outputs are NaN: the Python API then takes the
// composed path, which names what it refused.
template <typename T>
void rdm_spearman_ceiling(const T* x, const double* w, double* sims, double* lower, double* upper, int64_t s_n,
                          int64_t b_n, int64_t n, int64_t p, int64_t models, int64_t rdm_method) {
  const int64_t k = n * (n - 1) / 2;
  const auto patterns = [x, b_n, n, p, k, rdm_method] {
    return [x, b_n, n, p, k, rdm_method, sorter = RowSorter<T>(), z = std::vector<T>(p * zstride<T>(n)),
            d = std::vector<T>(k)](int64_t s, int64_t b, double shift, double* out) mutable {
      PreparedSet set;
      RowRange<T> range;
      double value = 0.0;
      if (!set_rdm(x + (s * b_n + b) * n * p, z.data(), d.data(), n, p, rdm_method, 0, set, range, value)) {
        std::fill(out, out + k, std::nan(""));
        return std::nan("");
      }
      return row_ranks(sorter, d.data(), k, shift, out, &range);
    };
  };
  spearman_ceiling(patterns, w, sims, lower, upper, s_n, b_n, k, models, s_n * b_n * n * n * p);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> rdm_spearman_ceiling_cpu(const at::Tensor& x, const at::Tensor& w,
                                                                       int64_t rdm_method) {
  TORCH_CHECK_VALUE(x.device().is_cpu() && w.device().is_cpu(),
                    "rsa_rdm_spearman_ceiling: x and w must be CPU tensors, got ", x.device(), " and ", w.device());
  TORCH_CHECK_VALUE(x.dim() == 4 && x.size(0) >= 2 && x.size(2) >= 3 && x.size(3) >= 1,
                    "rsa_rdm_spearman_ceiling: x must be (S >= 2, B, n >= 3, p >= 1), got ", x.sizes());
  TORCH_CHECK_VALUE(rdm_method >= 0 && rdm_method <= 2,
                    "rsa_rdm_spearman_ceiling: rdm_method must be 0, 1 or 2, got ", rdm_method);
  const int64_t s_n = x.size(0), b_n = x.size(1), n = x.size(2), p = x.size(3), k = n * (n - 1) / 2;
  TORCH_CHECK_VALUE(w.dim() == 2 && w.size(1) == k, "rsa_rdm_spearman_ceiling: w must be (M, ", k, ") for x's ", n,
                    " conditions, got ", w.sizes());
  TORCH_CHECK_TYPE(w.scalar_type() == at::kDouble, "rsa_rdm_spearman_ceiling: w must be float64, got ",
                   w.scalar_type());
  const auto xc = x.contiguous();
  const auto wc = w.contiguous();
  const int64_t models = w.size(0);
  auto opts = x.options().dtype(at::kDouble);
  auto sims = at::empty({s_n, b_n, models}, opts), lower = at::empty({b_n}, opts), upper = at::empty({b_n}, opts);
  if (b_n == 0) return {sims, lower, upper};
  switch (x.scalar_type()) {
    case at::kDouble:
      rdm_spearman_ceiling(xc.data_ptr<double>(), wc.data_ptr<double>(), sims.data_ptr<double>(),
                           lower.data_ptr<double>(), upper.data_ptr<double>(), s_n, b_n, n, p, models, rdm_method);
      break;
    case at::kFloat:
      rdm_spearman_ceiling(xc.data_ptr<float>(), wc.data_ptr<double>(), sims.data_ptr<double>(),
                           lower.data_ptr<double>(), upper.data_ptr<double>(), s_n, b_n, n, p, models, rdm_method);
      break;
    default:
      TORCH_CHECK_TYPE(false, "rsa_rdm_spearman_ceiling: x must be float64 or float32, got ", x.scalar_type());
  }
  return {sims, lower, upper};
}

template <typename T>
void permute_condensed(const T* src, const int64_t* perms, T* out, int64_t n_perm, int64_t batch, int64_t n) {
  const int64_t k_total = n * (n - 1) / 2;
#pragma omp parallel for collapse(2) schedule(static) if (n_perm * batch * k_total > kParallelWork)
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

// Every row of perms (P, n) must be a permutation of 0 .. n-1: a repeated index would leave another
// condition out, and an index outside the range would read outside src. One pass; stamp[v] holds the
// last row that used v, so nothing is cleared between rows.
void check_permutations(const char* op, const int64_t* perms, int64_t n_perm, int64_t n) {
  std::vector<int64_t> stamp(static_cast<size_t>(n), -1);
  for (int64_t p = 0; p < n_perm; ++p) {
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = perms[p * n + i];
      TORCH_CHECK_VALUE(v >= 0 && v < n, op, ": perms row ", p, " is not a permutation of 0..", n - 1, ": entry ",
                        i, " is ", v, ", outside [0, ", n, ")");
      TORCH_CHECK_VALUE(stamp[v] != p, op, ": perms row ", p, " is not a permutation of 0..", n - 1, ": index ",
                        v, " repeats (entry ", i, ")");
      stamp[v] = p;
    }
  }
}

at::Tensor permute_condensed_cpu(const at::Tensor& src, const at::Tensor& perms) {
  TORCH_CHECK_VALUE(src.device().is_cpu() && perms.device().is_cpu(),
                    "rsa_permute_condensed: src and perms must be CPU tensors, got ", src.device(), " and ",
                    perms.device());
  TORCH_CHECK_VALUE(src.dim() == 2, "rsa_permute_condensed: src must be (B, K), got ", src.sizes());
  TORCH_CHECK_TYPE(perms.scalar_type() == at::kLong, "rsa_permute_condensed: perms must be (P, n) int64, got ",
                   perms.sizes(), " ", perms.scalar_type());
  TORCH_CHECK_VALUE(perms.dim() == 2, "rsa_permute_condensed: perms must be (P, n) int64, got ", perms.sizes(), " ",
                    perms.scalar_type());
  const int64_t n = perms.size(1), k = src.size(1);
  TORCH_CHECK_VALUE(n >= 2 && n * (n - 1) / 2 == k, "rsa_permute_condensed: src (B, K) must hold n(n-1)/2 = ",
                    n * (n - 1) / 2, " pairs for perms of n = ", n, " conditions (n >= 2), got K = ", k);
  const auto pc = perms.contiguous();
  check_permutations("rsa_permute_condensed", pc.data_ptr<int64_t>(), perms.size(0), n);
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
    default:
      TORCH_CHECK_TYPE(false, "rsa_permute_condensed: src must be float64 or float32, got ", src.scalar_type());
  }
  return out;
}

// The cluster test's null, one flip at a time in a per-thread buffer: no (P, T) t matrix. A flip changes
// the subjects' signs: its mean over subjects is sum_i f_i x_it / S, and its sum of squared deviations is
// taken around that mean (two passes over S values: no cancellation however close the subjects are). x is
// (S, T) row-major, so every pass runs over t contiguously (vectorised; so are the square roots).
FASTALIGN_CLONES double flip_max_mass(const double* x, const double* f, double* mean, double* tv, int64_t s,
                                      int64_t t_len, double threshold, int64_t tail) {
  const double inv_s = 1.0 / static_cast<double>(s);
  const double var_scale = 1.0 / static_cast<double>((s - 1) * s);
  std::fill(mean, mean + t_len, 0.0);
  std::fill(tv, tv + t_len, 0.0);
  for (int64_t i = 0; i < s; ++i) {
    const double fi = f[i];
    const double* xi = x + i * t_len;
    for (int64_t t = 0; t < t_len; ++t) mean[t] += fi * xi[t];
  }
  for (int64_t t = 0; t < t_len; ++t) mean[t] *= inv_s;
  for (int64_t i = 0; i < s; ++i) {
    const double fi = f[i];
    const double* xi = x + i * t_len;
    for (int64_t t = 0; t < t_len; ++t) {
      const double d = fi * xi[t] - mean[t];
      tv[t] += d * d;
    }
  }
  for (int64_t t = 0; t < t_len; ++t) tv[t] = mean[t] / std::sqrt(tv[t] * var_scale);
  // runs beyond the threshold: within a run every term has the run's sign, so its running sum only grows
  // and the largest running sum is the largest run's mass
  double best = 0.0, up = 0.0, down = 0.0;
  for (int64_t t = 0; t < t_len; ++t) {
    up = tail >= 0 && tv[t] > threshold ? up + tv[t] : 0.0;
    down = tail <= 0 && tv[t] < -threshold ? down - tv[t] : 0.0;
    best = std::max(best, std::max(up, down));
  }
  return best;
}

void cluster_null(const double* x, const double* flips, double* out, int64_t n_flips, int64_t s, int64_t t_len,
                  double threshold, int64_t tail) {
  const bool parallel = n_flips * s * t_len > kParallelWork;
#pragma omp parallel if (parallel)
  {
    std::vector<double> mean(static_cast<size_t>(t_len)), tv(static_cast<size_t>(t_len));
#pragma omp for schedule(static)
    for (int64_t p = 0; p < n_flips; ++p) {
      out[p] = flip_max_mass(x, flips + p * s, mean.data(), tv.data(), s, t_len, threshold, tail);
    }
  }
}

at::Tensor cluster_null_cpu(const at::Tensor& x, const at::Tensor& flips, double threshold, int64_t tail) {
  TORCH_CHECK_VALUE(x.device().is_cpu() && flips.device().is_cpu(),
                    "rsa_cluster_null: x and flips must be CPU tensors, got ", x.device(), " and ", flips.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kDouble && flips.scalar_type() == at::kDouble,
                   "rsa_cluster_null: x and flips must be float64, got ", x.scalar_type(), " and ",
                   flips.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 2 && x.size(0) >= 2 && x.size(1) >= 1,
                    "rsa_cluster_null: x must be (n_subjects >= 2, n_times >= 1), got ", x.sizes());
  TORCH_CHECK_VALUE(flips.dim() == 2 && flips.size(1) == x.size(0),
                    "rsa_cluster_null: flips must be (P, n_subjects = ", x.size(0), "), got ", flips.sizes());
  TORCH_CHECK_VALUE(std::isfinite(threshold) && threshold > 0.0,
                    "rsa_cluster_null: threshold must be a positive finite number, got ", threshold);
  TORCH_CHECK_VALUE(tail == 1 || tail == -1 || tail == 0, "rsa_cluster_null: tail must be 1, -1 or 0, got ", tail);
  const int64_t s = x.size(0), t_len = x.size(1), n_flips = flips.size(0);
  const auto fc = flips.contiguous();
  const double* f = fc.data_ptr<double>();
  for (int64_t u = 0; u < n_flips * s; ++u) {
    TORCH_CHECK_VALUE(f[u] == 1.0 || f[u] == -1.0, "rsa_cluster_null: flips must hold only 1 and -1, got ", f[u],
                      " at flips[", u / s, ", ", u % s, "]");
  }
  // a copy of x with each time point's effects scaled by 2^-e where their squares are unsafe (t is the
  // same for x * 2^-e); NaN / inf have no t, nor has a time point whose subjects are equal up to rounding
  // (the Python API's rule: a spread within 16 sqrt(S) eps of the largest |value|)
  auto xs = x.clone(at::MemoryFormat::Contiguous);  // one copy, contiguous whatever x's strides
  double* xp = xs.data_ptr<double>();
  const double flat_tol = 16.0 * std::numeric_limits<double>::epsilon() * std::sqrt(static_cast<double>(s));
  for (int64_t t = 0; t < t_len; ++t) {
    double maxabs = 0.0;
    for (int64_t i = 0; i < s; ++i) {
      const double v = xp[i * t_len + t];
      TORCH_CHECK_VALUE(std::isfinite(v), "rsa_cluster_null: x[", i, ", ", t, "] is ", v, "; expected finite values");
      maxabs = std::max(maxabs, std::fabs(v));
    }
    const int e = scale_exponent<double>(maxabs, s);
    double lo = std::numeric_limits<double>::infinity(), hi = -lo;
    for (int64_t i = 0; i < s; ++i) {
      double& v = xp[i * t_len + t];
      if (e != 0) v = std::ldexp(v, -e);
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
    TORCH_CHECK_VALUE(hi - lo > flat_tol * std::max(hi, -lo), "rsa_cluster_null: x has zero variance across ",
                      "subjects at time ", t, " (its values are equal up to rounding); t is undefined there");
  }
  auto out = at::empty({n_flips}, x.options());
  cluster_null(xp, f, out.data_ptr<double>(), n_flips, s, t_len, threshold, tail);
  return out;
}

// Kendall's tau-a of one pair of rows in O(K log K) (Knight's algorithm, as scipy / rsatoolbox): sort
// positions by (x, y); discordant pairs are then exactly the inversions of y, counted by a merge sort;
// ties in x, in y and joint ties are counted from runs. con - dis = tot - xtie - ytie + ntie - 2 dis,
// all in int64. A row with NaN has no tau-a (NaN breaks the strict weak order the sort needs): NaN, as
// rsa_rank's NaN rows; compare_rdms drops NaN entries before it gets here.
template <typename T>
double tau_a_pair(const T* x, const T* y, int64_t n, std::vector<int64_t>& idx, std::vector<T>& ys,
                  std::vector<T>& buf) {
  if (sum_lanes(n, [x, y](int64_t k) { return std::isnan(x[k]) || std::isnan(y[k]) ? 1.0 : 0.0; }) > 0) {
    return std::nan("");
  }
  idx.resize(n);
  for (int64_t k = 0; k < n; ++k) idx[k] = k;
  std::sort(idx.begin(), idx.end(), [x, y](int64_t a, int64_t b) {
    return x[a] < x[b] || (x[a] == x[b] && y[a] < y[b]);
  });
  int64_t xtie = 0, ntie = 0;
  for (int64_t i = 0; i < n;) {
    int64_t j = i + 1;
    while (j < n && x[idx[j]] == x[idx[i]]) ++j;
    xtie += (j - i) * (j - i - 1) / 2;
    for (int64_t u = i; u < j;) {  // joint ties: runs of equal y inside the run of equal x
      int64_t v = u + 1;
      while (v < j && y[idx[v]] == y[idx[u]]) ++v;
      ntie += (v - u) * (v - u - 1) / 2;
      u = v;
    }
    i = j;
  }
  ys.resize(n);
  buf.resize(n);
  for (int64_t k = 0; k < n; ++k) ys[k] = y[idx[k]];
  int64_t dis = 0;  // bottom-up merge sort counting strict inversions
  for (int64_t width = 1; width < n; width *= 2) {
    for (int64_t lo = 0; lo < n; lo += 2 * width) {
      const int64_t mid = std::min(lo + width, n), hi = std::min(lo + 2 * width, n);
      int64_t i = lo, j = mid, k = lo;
      while (i < mid && j < hi) {
        if (ys[j] < ys[i]) {
          dis += mid - i;
          buf[k++] = ys[j++];
        } else {
          buf[k++] = ys[i++];
        }
      }
      while (i < mid) buf[k++] = ys[i++];
      while (j < hi) buf[k++] = ys[j++];
    }
    ys.swap(buf);
  }
  int64_t ytie = 0;
  for (int64_t i = 0; i < n;) {
    int64_t j = i + 1;
    while (j < n && ys[j] == ys[i]) ++j;
    ytie += (j - i) * (j - i - 1) / 2;
    i = j;
  }
  const int64_t tot = n * (n - 1) / 2;
  return static_cast<double>(tot - xtie - ytie + ntie - 2 * dis) / static_cast<double>(tot);
}

template <typename T>
void tau_a_pairs(const T* a, const T* b, const int64_t* ia, const int64_t* ib, double* out, int64_t pairs,
                 int64_t n) {
#pragma omp parallel if (pairs > 1 && pairs * n > kParallelWork)
  {
    std::vector<int64_t> idx;
    std::vector<T> ys, buf;
#pragma omp for schedule(dynamic, 1)
    for (int64_t p = 0; p < pairs; ++p) out[p] = tau_a_pair(a + ia[p] * n, b + ib[p] * n, n, idx, ys, buf);
  }
}

// ia / ib entries all in [0, rows): they index rows of a / b.
void check_row_indices(const char* op, const char* name, const at::Tensor& idx, int64_t rows, const char* of) {
  if (idx.numel() == 0) return;
  const int64_t lo = idx.min().item<int64_t>(), hi = idx.max().item<int64_t>();
  TORCH_CHECK_VALUE(lo >= 0 && hi < rows, op, ": ", name, " indexes rows of ", of, " and must lie in [0, ", rows,
                    "), got values in [", lo, ", ", hi, "]");
}

at::Tensor kendall_tau_a_cpu(const at::Tensor& a, const at::Tensor& b, const at::Tensor& ia, const at::Tensor& ib) {
  TORCH_CHECK_VALUE(a.device().is_cpu() && b.device().is_cpu() && ia.device().is_cpu() && ib.device().is_cpu(),
                    "rsa_kendall_tau_a: a, b, ia and ib must be CPU tensors, got ", a.device(), ", ", b.device(),
                    ", ", ia.device(), " and ", ib.device());
  TORCH_CHECK_VALUE(a.dim() == 2 && b.dim() == 2 && a.size(1) == b.size(1),
                    "rsa_kendall_tau_a: a must be (Ba, K) and b (Bb, K) with one K, got ", a.sizes(), " and ",
                    b.sizes());
  const auto ta = a.scalar_type();
  TORCH_CHECK_TYPE(ta == b.scalar_type() && (ta == at::kDouble || ta == at::kFloat),
                   "rsa_kendall_tau_a: a and b must be both float64 or both float32, got ", ta, " and ",
                   b.scalar_type());
  TORCH_CHECK_VALUE(ia.dim() == 1 && ib.dim() == 1 && ia.size(0) == ib.size(0),
                    "rsa_kendall_tau_a: ia and ib must be vectors of one length, got ", ia.sizes(), " and ",
                    ib.sizes());
  TORCH_CHECK_TYPE(ia.scalar_type() == at::kLong && ib.scalar_type() == at::kLong,
                   "rsa_kendall_tau_a: ia and ib must be int64, got ", ia.scalar_type(), " and ", ib.scalar_type());
  check_row_indices("rsa_kendall_tau_a", "ia", ia, a.size(0), "a");
  check_row_indices("rsa_kendall_tau_a", "ib", ib, b.size(0), "b");
  const int64_t n = a.size(1);
  TORCH_CHECK_VALUE(n >= 2, "rsa_kendall_tau_a: need K >= 2 entries per row, got ", n);
  const auto ac = a.contiguous(), bc = b.contiguous(), iac = ia.contiguous(), ibc = ib.contiguous();
  auto out = at::empty({ia.size(0)}, a.options().dtype(at::kDouble));
  switch (a.scalar_type()) {
    case at::kDouble:
      tau_a_pairs(ac.data_ptr<double>(), bc.data_ptr<double>(), iac.data_ptr<int64_t>(), ibc.data_ptr<int64_t>(),
                  out.data_ptr<double>(), ia.size(0), n);
      break;
    case at::kFloat:
      tau_a_pairs(ac.data_ptr<float>(), bc.data_ptr<float>(), iac.data_ptr<int64_t>(), ibc.data_ptr<int64_t>(),
                  out.data_ptr<double>(), ia.size(0), n);
      break;
    default: TORCH_CHECK(false, "unreachable: a's dtype was checked above");
  }
  return out;
}

// ----------------------------------------------------------------------------------------------- RNG

// The MT19937 state transition of at::mt19937_engine::next_state (ATen/core/MT19937RNGEngine.h), which is
// private there: the 624 words that the next 624 draws temper.
void mt19937_twist(uint32_t* state) {
  constexpr int N = 624, M = 397;
  constexpr uint32_t MATRIX_A = 0x9908b0dfu, UMASK = 0x80000000u, LMASK = 0x7fffffffu;
  auto twist = [](uint32_t u, uint32_t v) {
    const uint32_t mixed = (u & UMASK) | (v & LMASK);
    return (mixed >> 1) ^ ((v & 1u) ? MATRIX_A : 0u);
  };
  for (int i = 0; i < N - M; ++i) state[i] = state[i + M] ^ twist(state[i], state[i + 1]);
  for (int i = N - M; i < N - 1; ++i) state[i] = state[i + M - N] ^ twist(state[i], state[i + 1]);
  state[N - 1] = state[M - 1] ^ twist(state[N - 1], state[0]);
}

// Advances a CPU generator exactly as n calls of its random() (n 32-bit draws) would, without tempering
// or converting the words: what a float32 uniform_ or normal_ of values that are overwritten anyway
// consumes (a random CORnet-S init that a checkpoint replaces), at about a tenth of the cost.
void rng_discard_cpu(const std::optional<at::Generator>& generator, int64_t n) {
  // 2^36 words (a 256 GiB float32 tensor) take about 40 s; a larger n is a mistake, not a tensor's size
  constexpr int64_t kMaxDraws = int64_t{1} << 36;
  TORCH_CHECK_VALUE(n >= 0 && n <= kMaxDraws, "rng_discard: n must be in [0, 2^36], got ", n);
  auto* gen = at::get_generator_or_default<at::CPUGeneratorImpl>(generator, at::detail::getDefaultCPUGenerator());
  std::lock_guard<std::mutex> lock(gen->mutex_);
  at::mt19937 engine = gen->engine();
  at::mt19937_data_pod d = engine.data();
  TORCH_CHECK_VALUE(engine.is_valid(), "rng_discard: the generator's state is invalid");
  while (n > 0) {
    // a draw decrements left_ and twists when it reaches 0 (left_ = 624, next_ = 0), then reads state_[next_++]
    const int64_t quiet = d.left_ - 1;  // draws before the one that twists
    if (n <= quiet) {
      d.left_ -= static_cast<int>(n);
      d.next_ += static_cast<uint32_t>(n);
      break;
    }
    n -= quiet + 1;
    mt19937_twist(d.state_.data());
    d.left_ = 624;
    d.next_ = 1;
  }
  engine.set_data(d);
  gen->set_engine(engine);
}

// ----------------------------------------------------------------------------------------- conv taps

// The tap ops move values: one kernel per element size (unsigned words) serves every floating dtype.
template <typename W>
void gather_taps(const W* w, W* out, int64_t n_out, int64_t c, int64_t kh, int64_t kw, int64_t r0, int64_t th,
                 int64_t c0, int64_t tw) {
  const int64_t taps = kh * kw;
#pragma omp parallel for schedule(static) if (n_out > 1 && n_out * c * taps > kParallelWork)
  for (int64_t k = 0; k < n_out; ++k) {
    const W* src = w + k * c * taps;  // (C, kh, kw): one row, small enough to stay in cache
    W* dst = out + k * th * tw * c;    // (th, tw, C), written in order
    for (int64_t i = 0; i < th; ++i) {
      for (int64_t j = 0; j < tw; ++j) {
        const W* s = src + (r0 + i) * kw + c0 + j;
        W* d = dst + (i * tw + j) * c;
        for (int64_t ci = 0; ci < c; ++ci) d[ci] = s[ci * taps];
      }
    }
  }
}

template <typename W>
void scatter_taps(const W* g, W* out, int64_t n_out, int64_t c, int64_t kh, int64_t kw, int64_t r0, int64_t th,
                  int64_t c0, int64_t tw) {
  const int64_t taps = kh * kw;
#pragma omp parallel for schedule(static) if (n_out > 1 && n_out * c * taps > kParallelWork)
  for (int64_t k = 0; k < n_out; ++k) {
    const W* src = g + k * th * tw * c;  // (th, tw, C), read in order
    W* dst = out + k * c * taps;         // (C, kh, kw): one row, zeroed, then the taps written in cache
    std::memset(dst, 0, sizeof(W) * c * taps);
    for (int64_t i = 0; i < th; ++i) {
      for (int64_t j = 0; j < tw; ++j) {
        const W* s = src + (i * tw + j) * c;
        W* d = dst + (r0 + i) * kw + c0 + j;
        for (int64_t ci = 0; ci < c; ++ci) d[ci * taps] = s[ci];
      }
    }
  }
}

// Calls copy(in, out) with both pointers as unsigned words of the element's size.
template <typename Copy>
void by_element_size(const char* op, const at::Tensor& in, at::Tensor& out, Copy copy) {
  auto as = [&](auto word) {
    using W = decltype(word);
    copy(static_cast<const W*>(in.const_data_ptr()), static_cast<W*>(out.mutable_data_ptr()));
  };
  switch (in.element_size()) {
    case 2: as(uint16_t{}); break;
    case 4: as(uint32_t{}); break;
    case 8: as(uint64_t{}); break;
    default: TORCH_CHECK(false, op, ": unreachable: the dtype was checked above");
  }
}

void check_taps_tensor(const char* op, const char* name, const at::Tensor& t, const char* shape) {
  TORCH_CHECK_VALUE(t.device().is_cpu() || t.device().is_meta(), op, ": ", name, " must be a CPU tensor, got ",
                    t.device());
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), op, ": ", name,
                   " must be floating point (float16, bfloat16, float32 or float64), got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 4, op, ": ", name, " must be ", shape, ", got shape ", t.sizes());
}

void check_tap_range(const char* op, const char* lo_name, int64_t lo, const char* hi_name, int64_t hi,
                     int64_t size, const char* size_name) {
  TORCH_CHECK_VALUE(0 <= lo && lo < hi && hi <= size, op, ": need 0 <= ", lo_name, " < ", hi_name, " <= ",
                    size_name, " (", size, "), got ", lo_name, " = ", lo, " and ", hi_name, " = ", hi);
}

at::Tensor conv_taps_cpu(const at::Tensor& weight, int64_t r0, int64_t r1, int64_t c0, int64_t c1) {
  const char* op = "conv_taps";
  check_taps_tensor(op, "weight", weight, "(C_out, C_in, kh, kw)");
  const int64_t n_out = weight.size(0), c = weight.size(1), kh = weight.size(2), kw = weight.size(3);
  check_tap_range(op, "r0", r0, "r1", r1, kh, "kh");
  check_tap_range(op, "c0", c0, "c1", c1, kw, "kw");
  auto out = at::empty({n_out, r1 - r0, c1 - c0, c}, weight.options());
  if (weight.is_meta()) return out;  // shapes only: what torch.compile traces with
  const auto w = weight.contiguous();
  if (out.numel() > 0) {
    by_element_size(op, w, out, [&](const auto* src, auto* dst) {
      gather_taps(src, dst, n_out, c, kh, kw, r0, r1 - r0, c0, c1 - c0);
    });
  }
  return out;
}

at::Tensor conv_taps_backward_cpu(const at::Tensor& grad, int64_t kh, int64_t kw, int64_t r0, int64_t c0) {
  const char* op = "conv_taps_backward";
  check_taps_tensor(op, "grad", grad, "(C_out, th, tw, C_in)");
  const int64_t n_out = grad.size(0), th = grad.size(1), tw = grad.size(2), c = grad.size(3);
  TORCH_CHECK_VALUE(kh >= 1 && kw >= 1, op, ": kh and kw must be >= 1, got ", kh, " and ", kw);
  check_tap_range(op, "r0", r0, "r0 + th", r0 + th, kh, "kh");
  check_tap_range(op, "c0", c0, "c0 + tw", c0 + tw, kw, "kw");
  auto out = at::empty({n_out, c, kh, kw}, grad.options());
  if (grad.is_meta()) return out;
  const auto g = grad.contiguous();
  if (out.numel() > 0) {
    by_element_size(op, g, out, [&](const auto* src, auto* dst) {
      scatter_taps(src, dst, n_out, c, kh, kw, r0, th, c0, tw);
    });
  }
  return out;
}

// Row statistics for the GEMM-based RDMs of many features (fastalign/rsa/torch_chunked.py on the CPU): one
// vectorised pass per row where torch takes a pass per statistic (amax, amin, sum; sub, sum, norm).
// Lanes of 8 values in GCC vector types (the baseline ISA runs them as SSE2 halves); sums in float64 lanes.
typedef double D4 __attribute__((vector_size(32)));
typedef float F8 __attribute__((vector_size(32)));
typedef float F4 __attribute__((vector_size(16)));
typedef int32_t I8 __attribute__((vector_size(32)));
typedef int64_t L4 __attribute__((vector_size(32)));

template <typename V>
inline V load_vec(const void* p) {
  V v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

inline double hsum(D4 a, D4 b) { return ((a[0] + b[0]) + (a[1] + b[1])) + ((a[2] + b[2]) + (a[3] + b[3])); }

// row_stats' scalar tail x[k .. p) and its output, from the vector loop's min l, max h, NaN and sum.
template <typename T>
inline void row_stats_tail(const T* x, int64_t k, int64_t p, T l, T h, bool any_nan, double sum, double* out) {
  for (; k < p; ++k) {
    const T v = x[k];
    l = v < l ? v : l;
    h = v > h ? v : h;
    any_nan |= v != v;
    sum += v;
  }
  out[0] = any_nan ? std::nan("") : h;
  out[1] = any_nan ? std::nan("") : l;
  out[2] = sum;
}

// out = {max, min, sum} of x[0 .. p): max and min NaN where x holds NaN (as torch's amax / amin).
// float32 rows are summed 16 values per step in two float32 vector chains, flushed into float64 every 256
// values (each lane's float32 partial sum holds 16 terms, as accurate as torch's cascade sum); converting
// every value to float64 made this pass compute-bound (2.7x torch's amax).
constexpr int64_t kFlush = 256;
inline D4 widen_lo(F8 v) { return __builtin_convertvector(__builtin_shufflevector(v, v, 0, 1, 2, 3), D4); }
inline D4 widen_hi(F8 v) { return __builtin_convertvector(__builtin_shufflevector(v, v, 4, 5, 6, 7), D4); }

FASTALIGN_CLONES void row_stats_f32(const float* x, int64_t p, double* out) {
  F8 lo0, hi0, lo1, hi1;
  I8 nan = {};
  for (int u = 0; u < 8; ++u) lo0[u] = hi0[u] = lo1[u] = hi1[u] = x[0];
  D4 s0 = {}, s1 = {};
  int64_t k = 0;
  while (k + 16 <= p) {
    F8 fa = {}, fb = {};
    const int64_t end = std::min(p, k + kFlush);
    for (; k + 16 <= end; k += 16) {
      const F8 a = load_vec<F8>(x + k), b = load_vec<F8>(x + k + 8);
      lo0 = a < lo0 ? a : lo0;
      hi0 = a > hi0 ? a : hi0;
      lo1 = b < lo1 ? b : lo1;
      hi1 = b > hi1 ? b : hi1;
      nan |= (a != a) | (b != b);
      fa += a;
      fb += b;
    }
    s0 += widen_lo(fa) + widen_lo(fb);
    s1 += widen_hi(fa) + widen_hi(fb);
  }
  float l = x[0], h = x[0];
  bool any_nan = false;
  for (int u = 0; u < 8; ++u) {
    l = std::min(l, std::min(lo0[u], lo1[u]));
    h = std::max(h, std::max(hi0[u], hi1[u]));
    any_nan |= nan[u] != 0;
  }
  row_stats_tail(x, k, p, l, h, any_nan, hsum(s0, s1), out);
}

FASTALIGN_CLONES void row_stats_f64(const double* x, int64_t p, double* out) {
  D4 lo0, hi0, lo1, hi1, s0 = {}, s1 = {}, s2 = {}, s3 = {};
  L4 nan = {};
  for (int u = 0; u < 4; ++u) lo0[u] = hi0[u] = lo1[u] = hi1[u] = x[0];
  int64_t k = 0;
  for (; k + 16 <= p; k += 16) {
    const D4 a = load_vec<D4>(x + k), b = load_vec<D4>(x + k + 4);
    const D4 c = load_vec<D4>(x + k + 8), d = load_vec<D4>(x + k + 12);
    const D4 ac = a < c ? a : c, bd = b < d ? b : d, ac_hi = a > c ? a : c, bd_hi = b > d ? b : d;
    lo0 = ac < lo0 ? ac : lo0;
    hi0 = ac_hi > hi0 ? ac_hi : hi0;
    lo1 = bd < lo1 ? bd : lo1;
    hi1 = bd_hi > hi1 ? bd_hi : hi1;
    nan |= (a != a) | (b != b) | (c != c) | (d != d);
    s0 += a;
    s1 += b;
    s2 += c;
    s3 += d;
  }
  double l = x[0], h = x[0];
  bool any_nan = false;
  for (int u = 0; u < 4; ++u) {
    l = std::min(l, std::min(lo0[u], lo1[u]));
    h = std::max(h, std::max(hi0[u], hi1[u]));
    any_nan |= nan[u] != 0;
  }
  row_stats_tail(x, k, p, l, h, any_nan, hsum(s0 + s2, s1 + s3), out);
}

// y = x - m, rounded to the dtype (what torch.sub of the dtype's mean computes), stored, and out = {sum y,
// sum y^2}: float32 in vector chains flushed into float64 every kFlush values, as row_stats_f32; float64 in
// eight chains.
FASTALIGN_CLONES void center_row_f32(const float* x, float m, int64_t c, float* y, double* out) {
  const F8 mv = {m, m, m, m, m, m, m, m};
  D4 s0 = {}, s1 = {}, q0 = {}, q1 = {};
  int64_t k = 0;
  while (k + 16 <= c) {
    F8 sa = {}, sb = {}, qa = {}, qb = {};
    const int64_t end = std::min(c, k + kFlush);
    for (; k + 16 <= end; k += 16) {
      const F8 d = load_vec<F8>(x + k) - mv, e = load_vec<F8>(x + k + 8) - mv;
      std::memcpy(y + k, &d, sizeof d);
      std::memcpy(y + k + 8, &e, sizeof e);
      sa += d;
      sb += e;
      qa += d * d;
      qb += e * e;
    }
    s0 += widen_lo(sa) + widen_lo(sb);
    s1 += widen_hi(sa) + widen_hi(sb);
    q0 += widen_lo(qa) + widen_lo(qb);
    q1 += widen_hi(qa) + widen_hi(qb);
  }
  double sum = hsum(s0, s1), sq = hsum(q0, q1);
  for (; k < c; ++k) {
    const float d = x[k] - m;
    y[k] = d;
    sum += d;
    sq += static_cast<double>(d) * d;
  }
  out[0] = sum;
  out[1] = sq;
}

FASTALIGN_CLONES void center_row_f64(const double* x, double m, int64_t c, double* y, double* out) {
  const D4 mv = {m, m, m, m};
  D4 s0 = {}, s1 = {}, s2 = {}, s3 = {}, q0 = {}, q1 = {}, q2 = {}, q3 = {};
  int64_t k = 0;
  for (; k + 16 <= c; k += 16) {
    const D4 a0 = load_vec<D4>(x + k) - mv, a1 = load_vec<D4>(x + k + 4) - mv;
    const D4 a2 = load_vec<D4>(x + k + 8) - mv, a3 = load_vec<D4>(x + k + 12) - mv;
    std::memcpy(y + k, &a0, sizeof a0);
    std::memcpy(y + k + 4, &a1, sizeof a1);
    std::memcpy(y + k + 8, &a2, sizeof a2);
    std::memcpy(y + k + 12, &a3, sizeof a3);
    s0 += a0;
    s1 += a1;
    s2 += a2;
    s3 += a3;
    q0 += a0 * a0;
    q1 += a1 * a1;
    q2 += a2 * a2;
    q3 += a3 * a3;
  }
  double sum = hsum(s0 + s2, s1 + s3), sq = hsum(q0 + q2, q1 + q3);
  for (; k < c; ++k) {
    const double d = x[k] - m;
    y[k] = d;
    sum += d;
    sq += d * d;
  }
  out[0] = sum;
  out[1] = sq;
}

// Centred Gram matrices for the correlation RDMs of many features (torch_chunked._gram_rows): G = Y Y^T with
// Y = X - mean (each row's own mean, in X's dtype), in blocks of kGramDepth features. Each block's rows are
// centred (center_row_*, which also gives each row's sum and sum of squares) and packed into panels of W rows
// (W: one vector's lanes), feature-major, so that a panel's W values of one feature are one vector load. Register
// tiles of kGramRows rows (broadcast) x up to three panels' vectors accumulate one block's products and add them
// into the output; only tiles that reach the upper triangle are computed (52-58% of the products of a full
// GEMM at 200 conditions), and the lower triangle is copied from the upper one at the end. Each entry is one
// chain of FMAs over the block's features in order, the blocks added in order, whatever the vector width: the
// AVX2 and AVX-512 tiles give the same bits, alone or in a batch. 44 Gram matrices of 200 x 4,096 float32
// (11 calls of 4) with their centring and sums, 2-core Xeon: 124 ms on one thread and 69 on two, where the
// centring pass and MKL's GEMM of the centred chunks (torch.baddbmm, all n^2 products) took 192 and 111 ms;
// with the AVX2 tiles 87 ms on two threads (MKL, with AVX-512, 92).
constexpr int64_t kGramDepth = 256;
constexpr int64_t kGramPanels = 3;  // panels per tile: 3 vectors of columns

template <typename T>
inline void center_row(const T* x, T m, int64_t c, T* y, double* out) {
  if constexpr (std::is_same_v<T, float>) {
    center_row_f32(x, m, c, y, out);
  } else {
    center_row_f64(x, m, c, y, out);
  }
}

// panel[k * w + r] = tmp[r * kGramDepth + k] for k < kk, r < w: blocks of 8 x 8 float32 (4 x 4 float64) values
// transposed in registers (a scalar copy took as long as the centring pass).
FASTALIGN_CLONES void gram_transpose(const float* tmp, int64_t w, int64_t kk, float* panel) {
  int64_t k = 0;
  for (; k + 8 <= kk; k += 8) {
    for (int64_t r0 = 0; r0 < w; r0 += 8) {
      F8 r[8];
      for (int u = 0; u < 8; ++u) r[u] = load_vec<F8>(tmp + (r0 + u) * kGramDepth + k);
      F8 t[8], v[8];
      for (int u = 0; u < 8; u += 2) {
        t[u] = __builtin_shufflevector(r[u], r[u + 1], 0, 8, 1, 9, 4, 12, 5, 13);
        t[u + 1] = __builtin_shufflevector(r[u], r[u + 1], 2, 10, 3, 11, 6, 14, 7, 15);
      }
      for (int u = 0; u < 8; u += 4) {
        v[u] = __builtin_shufflevector(t[u], t[u + 2], 0, 1, 8, 9, 4, 5, 12, 13);
        v[u + 1] = __builtin_shufflevector(t[u], t[u + 2], 2, 3, 10, 11, 6, 7, 14, 15);
        v[u + 2] = __builtin_shufflevector(t[u + 1], t[u + 3], 0, 1, 8, 9, 4, 5, 12, 13);
        v[u + 3] = __builtin_shufflevector(t[u + 1], t[u + 3], 2, 3, 10, 11, 6, 7, 14, 15);
      }
      for (int u = 0; u < 4; ++u) {
        const F8 lo = __builtin_shufflevector(v[u], v[u + 4], 0, 1, 2, 3, 8, 9, 10, 11);
        const F8 hi = __builtin_shufflevector(v[u], v[u + 4], 4, 5, 6, 7, 12, 13, 14, 15);
        std::memcpy(panel + (k + u) * w + r0, &lo, sizeof lo);
        std::memcpy(panel + (k + u + 4) * w + r0, &hi, sizeof hi);
      }
    }
  }
  for (; k < kk; ++k) {
    for (int64_t r = 0; r < w; ++r) panel[k * w + r] = tmp[r * kGramDepth + k];
  }
}

FASTALIGN_CLONES void gram_transpose(const double* tmp, int64_t w, int64_t kk, double* panel) {
  int64_t k = 0;
  for (; k + 4 <= kk; k += 4) {
    for (int64_t r0 = 0; r0 < w; r0 += 4) {
      D4 r[4];
      for (int u = 0; u < 4; ++u) r[u] = load_vec<D4>(tmp + (r0 + u) * kGramDepth + k);
      const D4 t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 2, 6), t1 = __builtin_shufflevector(r[0], r[1], 1, 5, 3, 7);
      const D4 t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 2, 6), t3 = __builtin_shufflevector(r[2], r[3], 1, 5, 3, 7);
      const D4 o[4] = {__builtin_shufflevector(t0, t2, 0, 1, 4, 5), __builtin_shufflevector(t1, t3, 0, 1, 4, 5),
                       __builtin_shufflevector(t0, t2, 2, 3, 6, 7), __builtin_shufflevector(t1, t3, 2, 3, 6, 7)};
      for (int u = 0; u < 4; ++u) std::memcpy(panel + (k + u) * w + r0, &o[u], sizeof o[u]);
    }
  }
  for (; k < kk; ++k) {
    for (int64_t r = 0; r < w; ++r) panel[k * w + r] = tmp[r * kGramDepth + k];
  }
}

// Panel pi of one block: rows pi*W .. pi*W+W-1 of x (n x p, row stride sx) at features k0 .. k0+kk-1, centred
// (their sums and sums of squares added to sums), stored as panel[k * W + r]; rows past n are zeros.
template <typename T>
void gram_pack(const T* x, int64_t sx, const T* mean, int64_t n, int64_t w, int64_t pi, int64_t k0, int64_t kk,
               T* tmp, T* panel, double* sums) {
  for (int64_t r = 0; r < w; ++r) {
    const int64_t i = pi * w + r;
    T* t = tmp + r * kGramDepth;
    if (i < n) {
      double o[2];
      center_row(x + i * sx + k0, mean[i], kk, t, o);
      sums[2 * i] += o[0];
      sums[2 * i + 1] += o[1];
    } else {
      std::fill(t, t + kk, T(0));
    }
  }
  gram_transpose(tmp, w, kk, panel);
}

// One tile: rows i0 .. i0+rows-1 (a: their panel, offset to the first row) against the columns of NV panels
// from column j0 (b); adds the block's products into g (row stride n; only columns < n), or stores them (first).
template <typename T, int VB, int MR, int NV>
inline __attribute__((always_inline)) void gram_tile(const T* a, const T* b, int64_t kk, T* g, int64_t n,
                                                     int64_t j0, int64_t rows, bool first) {
  typedef T V __attribute__((vector_size(VB)));
  constexpr int64_t W = VB / static_cast<int64_t>(sizeof(T));
  const int64_t panel = W * kGramDepth;
  V acc[MR][NV];
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[i][v] = V{};
  }
  for (int64_t k = 0; k < kk; ++k) {
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) std::memcpy(&bv[v], b + v * panel + k * W, VB);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const T ai = a[k * W + i];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[i][v] += ai * bv[v];
    }
  }
  // Stores indexed by constants only (the loops unrolled): a runtime index into acc would keep it in memory.
  const int64_t cols = std::min<int64_t>(NV * W, n - j0);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    if (i >= rows) break;
    T* gi = g + i * n + j0;
    if (cols == NV * W) {
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        V out = acc[i][v];
        if (!first) {
          V old;
          std::memcpy(&old, gi + v * W, VB);
          out = old + out;
        }
        std::memcpy(gi + v * W, &out, VB);
      }
    } else {
      T part[NV * W];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) std::memcpy(part + v * W, &acc[i][v], VB);
      for (int64_t c = 0; c < cols; ++c) gi[c] = first ? part[c] : gi[c] + part[c];
    }
  }
}

// The tiles of row block i0 (rows i0 .. i0+MR-1 within one panel) against panels [max(its own, p0), p1).
template <typename T, int VB, int MR>
inline __attribute__((always_inline)) void gram_rows_impl(const T* pack, int64_t p0, int64_t p1, int64_t kk,
                                                          int64_t i0, T* g, int64_t n, bool first) {
  constexpr int64_t W = VB / static_cast<int64_t>(sizeof(T));
  const int64_t panel = W * kGramDepth, rows = std::min<int64_t>(MR, n - i0), pa = i0 / W;
  const T* a = pack + pa * panel + i0 % W;
  T* gr = g + i0 * n;
  for (int64_t pj = std::max(pa, p0); pj < p1; pj += kGramPanels) {
    const T* b = pack + pj * panel;
    switch (std::min<int64_t>(kGramPanels, p1 - pj)) {
      case 3:
        gram_tile<T, VB, MR, 3>(a, b, kk, gr, n, pj * W, rows, first);
        break;
      case 2:
        gram_tile<T, VB, MR, 2>(a, b, kk, gr, n, pj * W, rows, first);
        break;
      default:
        gram_tile<T, VB, MR, 1>(a, b, kk, gr, n, pj * W, rows, first);
    }
  }
}
// 32-byte vectors: 4 rows x 3 vectors (12 accumulators of 16 registers); 64-byte: 8 x 3 (24 of 32).
FASTALIGN_CLONES void gram_rows_f32(const float* pack, int64_t p0, int64_t p1, int64_t kk, int64_t i0, float* g,
                                    int64_t n, bool first) {
  gram_rows_impl<float, 32, 4>(pack, p0, p1, kk, i0, g, n, first);
}
FASTALIGN_CLONES void gram_rows_f64(const double* pack, int64_t p0, int64_t p1, int64_t kk, int64_t i0, double* g,
                                    int64_t n, bool first) {
  gram_rows_impl<double, 32, 4>(pack, p0, p1, kk, i0, g, n, first);
}
#ifdef FASTALIGN_AVX512_ROWS
__attribute__((target("arch=x86-64-v4"))) void gram_rows_f32_v4(const float* pack, int64_t p0, int64_t p1,
                                                                int64_t kk, int64_t i0, float* g, int64_t n,
                                                                bool first) {
  gram_rows_impl<float, 64, 8>(pack, p0, p1, kk, i0, g, n, first);
}
__attribute__((target("arch=x86-64-v4"))) void gram_rows_f64_v4(const double* pack, int64_t p0, int64_t p1,
                                                                int64_t kk, int64_t i0, double* g, int64_t n,
                                                                bool first) {
  gram_rows_impl<double, 64, 8>(pack, p0, p1, kk, i0, g, n, first);
}
#endif

// The tiles' layout on this CPU: vector lanes W (the panel height) and rows per tile.
template <typename T>
std::pair<int64_t, int64_t> gram_layout() {
#ifdef FASTALIGN_AVX512_ROWS
  if (avx512_rows()) return {64 / static_cast<int64_t>(sizeof(T)), 8};
#endif
  return {32 / static_cast<int64_t>(sizeof(T)), 4};
}

template <typename T>
void gram_rows(const T* pack, int64_t p0, int64_t p1, int64_t kk, int64_t i0, T* g, int64_t n, bool first) {
#ifdef FASTALIGN_AVX512_ROWS
  if (avx512_rows()) {
    if constexpr (std::is_same_v<T, float>) {
      return gram_rows_f32_v4(pack, p0, p1, kk, i0, g, n, first);
    } else {
      return gram_rows_f64_v4(pack, p0, p1, kk, i0, g, n, first);
    }
  }
#endif
  if constexpr (std::is_same_v<T, float>) {
    gram_rows_f32(pack, p0, p1, kk, i0, g, n, first);
  } else {
    gram_rows_f64(pack, p0, p1, kk, i0, g, n, first);
  }
}

// Column panels per pass over the row blocks: 384 columns of a 256-feature block (384 KiB of float32) stay
// in L2 while every row block reads them; over all columns at once, 4,000 conditions made every row block
// stream 4 MB of panels from memory.
constexpr int64_t kGramColumns = 384;

// Every tile of one packed block: column chunks of kGramColumns, each against the row blocks that reach it.
template <typename T>
void gram_block(const T* pack, int64_t panels, int64_t w, int64_t mr, int64_t kk, T* g, int64_t n, bool first) {
  const int64_t chunk = std::max<int64_t>(1, kGramColumns / w);
  for (int64_t p0 = 0; p0 < panels; p0 += chunk) {
    const int64_t p1 = std::min(panels, p0 + chunk);
    for (int64_t i0 = 0; i0 < std::min(n, p1 * w); i0 += mr) gram_rows(pack, p0, p1, kk, i0, g, n, first);
  }
}

// Copies each Gram matrix's upper triangle into its lower one.
template <typename T>
void gram_mirror(T* g, int64_t n) {
  for (int64_t i = 1; i < n; ++i) {
    for (int64_t j = 0; j < i; ++j) g[i * n + j] = g[j * n + i];
  }
}

// x (B, n, p) with rows of stride sx (batch stride sb), mean (B * n), g (B, n, n) contiguous, sums (B * n, 2)
// zeroed. RDMs are shared out whole while every thread gets one; the rest are split by blocks of rows.
template <typename T>
void gram_centered(const T* x, int64_t sb, int64_t sx, const T* mean, T* g, double* sums, int64_t batch, int64_t n,
                   int64_t p) {
  const auto [w, mr] = gram_layout<T>();
  const int64_t panels = (n + w - 1) / w, chunk = std::max<int64_t>(1, kGramColumns / w), depth = kGramDepth;
  const int64_t blocks = (p + depth - 1) / depth;
#ifdef _OPENMP
  const int64_t threads = std::max(1, omp_get_max_threads());
#else
  const int64_t threads = 1;
#endif
  const bool parallel = batch * n * n * p > kParallelWork;
  const int64_t whole = parallel ? batch - batch % threads : batch;
  std::vector<T> shared(static_cast<size_t>(whole < batch ? panels * w * depth : 0));
#pragma omp parallel if (parallel)
  {
    std::vector<T> tmp(static_cast<size_t>(w * depth)), own(static_cast<size_t>(panels * w * depth));
#pragma omp for schedule(static)
    for (int64_t b = 0; b < whole; ++b) {
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t k0 = blk * depth, kk = std::min(depth, p - k0);
        for (int64_t pi = 0; pi < panels; ++pi) {
          gram_pack(x + b * sb, sx, mean + b * n, n, w, pi, k0, kk, tmp.data(), own.data() + pi * w * depth,
                    sums + 2 * b * n);
        }
        gram_block(own.data(), panels, w, mr, kk, g + b * n * n, n, blk == 0);
      }
    }
    for (int64_t b = whole; b < batch; ++b) {
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t k0 = blk * depth, kk = std::min(depth, p - k0);
#pragma omp for schedule(static)
        for (int64_t pi = 0; pi < panels; ++pi) {
          gram_pack(x + b * sb, sx, mean + b * n, n, w, pi, k0, kk, tmp.data(), shared.data() + pi * w * depth,
                    sums + 2 * b * n);
        }
        for (int64_t p0 = 0; p0 < panels; p0 += chunk) {
          const int64_t p1 = std::min(panels, p0 + chunk), reach = (std::min(n, p1 * w) + mr - 1) / mr;
#pragma omp for schedule(dynamic, 1)
          for (int64_t rb = 0; rb < reach; ++rb) {
            gram_rows(shared.data(), p0, p1, kk, rb * mr, g + b * n * n, n, blk == 0);
          }
        }
      }
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < batch; ++b) gram_mirror(g + b * n * n, n);
  }
}

// (rows, p >= 1) float32 / float64 on the CPU; a copy with a contiguous last dim if it lacks one.
at::Tensor checked_rows(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ", t.device());
  TORCH_CHECK_TYPE(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble, op, ": ", name,
                   " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.dim() == 2 && t.size(1) >= 1, op, ": ", name, " must be (rows, p >= 1), got ", t.sizes());
  return t.size(1) == 1 || t.stride(1) == 1 ? t : t.contiguous();
}

// rsa_row_stats(x (R, p)) -> (R, 3) float64: each row's max, min (NaN for a row with NaN) and sum.
at::Tensor row_stats_cpu(const at::Tensor& x) {
  const auto xc = checked_rows("rsa_row_stats", "x", x);
  const int64_t rows = xc.size(0), p = xc.size(1), sx = xc.stride(0);
  auto out = at::empty({rows, 3}, xc.options().dtype(at::kDouble));
  double* o = out.data_ptr<double>();
  const bool f32 = xc.scalar_type() == at::kFloat;
#pragma omp parallel for schedule(static) if (rows > 1 && rows * p > kParallelWork)
  for (int64_t r = 0; r < rows; ++r) {
    if (f32) {
      row_stats_f32(xc.const_data_ptr<float>() + r * sx, p, o + 3 * r);
    } else {
      row_stats_f64(xc.const_data_ptr<double>() + r * sx, p, o + 3 * r);
    }
  }
  return out;
}

// rsa_gram_centered(x (B, n, p), mean (B * n,), gram (B, n, n)) -> (B * n, 2) float64: gram = Y Y^T per batch
// element for Y = x - mean (x's dtype, each row its own mean, rounded as torch.sub), and each row's sum and sum of
// squares of Y. x's rows need a contiguous last dim; gram must be contiguous (it is overwritten).
at::Tensor gram_centered_cpu(const at::Tensor& x, const at::Tensor& mean, at::Tensor gram) {
  const char* op = "rsa_gram_centered";
  TORCH_CHECK_VALUE(x.device().is_cpu(), op, ": x must be a CPU tensor, got ", x.device());
  TORCH_CHECK_TYPE(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble, op,
                   ": x must be float32 or float64, got ", x.scalar_type());
  TORCH_CHECK_VALUE(x.dim() == 3 && x.size(1) >= 1 && x.size(2) >= 1, op, ": x must be (B, n >= 1, p >= 1), got ",
                    x.sizes());
  const auto xc = x.stride(2) == 1 || x.size(2) == 1 ? x : x.contiguous();
  const int64_t batch = xc.size(0), n = xc.size(1), p = xc.size(2);
  TORCH_CHECK_TYPE(mean.scalar_type() == x.scalar_type() && gram.scalar_type() == x.scalar_type(), op,
                   ": mean and gram must have x's dtype ", x.scalar_type(), ", got ", mean.scalar_type(), " and ",
                   gram.scalar_type());
  TORCH_CHECK_VALUE(mean.device().is_cpu() && mean.dim() == 1 && mean.size(0) == batch * n, op,
                    ": mean must be a CPU tensor of shape (", batch * n, ",), got ", mean.sizes(), " on ",
                    mean.device());
  TORCH_CHECK_VALUE(gram.device().is_cpu() && gram.dim() == 3 && gram.size(0) == batch && gram.size(1) == n &&
                        gram.size(2) == n && gram.is_contiguous(),
                    op, ": gram must be a contiguous CPU tensor of shape (", batch, ", ", n, ", ", n, "), got ",
                    gram.sizes(), " with strides ", gram.strides(), " on ", gram.device());
  const auto m = mean.contiguous();
  auto sums = at::empty({batch * n, 2}, xc.options().dtype(at::kDouble));
  std::fill_n(sums.data_ptr<double>(), 2 * batch * n, 0.0);
  const int64_t sb = xc.stride(0), sx = xc.stride(1);
  if (xc.scalar_type() == at::kFloat) {
    gram_centered(xc.const_data_ptr<float>(), sb, sx, m.const_data_ptr<float>(), gram.data_ptr<float>(),
                  sums.data_ptr<double>(), batch, n, p);
  } else {
    gram_centered(xc.const_data_ptr<double>(), sb, sx, m.const_data_ptr<double>(), gram.data_ptr<double>(),
                  sums.data_ptr<double>(), batch, n, p);
  }
  return sums;
}
}  // namespace
}  // namespace fastalign

TORCH_LIBRARY_FRAGMENT(fastalign, m) {
  m.def("rsa_rank(Tensor x) -> Tensor");
  m.def("rsa_centered_ranks(Tensor x, bool normalize, ScalarType dtype) -> Tensor");
  m.def("rsa_rdm_direct(Tensor x, int method) -> Tensor");
  m.def("rsa_rdm_compare(Tensor x, Tensor w, int rdm_method, int compare) -> Tensor");
  m.def("rsa_spearman_ceiling(Tensor x, Tensor w) -> (Tensor, Tensor, Tensor)");
  m.def("rsa_rdm_spearman_ceiling(Tensor x, Tensor w, int rdm_method) -> (Tensor, Tensor, Tensor)");
  m.def("rsa_kendall_tau_a(Tensor a, Tensor b, Tensor ia, Tensor ib) -> Tensor");
  m.def("rsa_permute_condensed(Tensor src, Tensor perms) -> Tensor");
  m.def("rsa_cluster_null(Tensor x, Tensor flips, float threshold, int tail) -> Tensor");
  m.def("rsa_row_stats(Tensor x) -> Tensor");
  m.def("rsa_gram_centered(Tensor x, Tensor mean, Tensor(a!) gram) -> Tensor");
  m.def("conv_taps(Tensor weight, int r0, int r1, int c0, int c1) -> Tensor");
  m.def("conv_taps_backward(Tensor grad, int kh, int kw, int r0, int c0) -> Tensor");
  // no tensor arguments: one kernel for every dispatch key
  m.def("rng_discard(Generator? generator, int n) -> ()", &fastalign::rng_discard_cpu);
}

TORCH_LIBRARY_IMPL(fastalign, CPU, m) {
  m.impl("rsa_rank", &fastalign::rank_cpu);
  m.impl("rsa_centered_ranks", &fastalign::centered_ranks_cpu);
  m.impl("rsa_rdm_direct", &fastalign::rdm_direct_cpu);
  m.impl("rsa_rdm_compare", &fastalign::rdm_compare_cpu);
  m.impl("rsa_spearman_ceiling", &fastalign::spearman_ceiling_cpu);
  m.impl("rsa_rdm_spearman_ceiling", &fastalign::rdm_spearman_ceiling_cpu);
  m.impl("rsa_kendall_tau_a", &fastalign::kendall_tau_a_cpu);
  m.impl("rsa_permute_condensed", &fastalign::permute_condensed_cpu);
  m.impl("rsa_cluster_null", &fastalign::cluster_null_cpu);
  m.impl("rsa_row_stats", &fastalign::row_stats_cpu);
  m.impl("rsa_gram_centered", &fastalign::gram_centered_cpu);
  m.impl("conv_taps", &fastalign::conv_taps_cpu);
  m.impl("conv_taps_backward", &fastalign::conv_taps_backward_cpu);
}

// The tap copies' shapes, for torch.compile's tracing of CORnet-S's training step (fake tensors).
TORCH_LIBRARY_IMPL(fastalign, Meta, m) {
  m.impl("conv_taps", &fastalign::conv_taps_cpu);
  m.impl("conv_taps_backward", &fastalign::conv_taps_backward_cpu);
}

// None of these ops has a derivative: called directly with inputs that require grad, their outputs must not
// claim a gradient that backward would silently drop (the Python API detaches or refuses before this).
TORCH_LIBRARY_IMPL(fastalign, Autograd, m) {
  for (const char* op : {"rsa_rank", "rsa_centered_ranks", "rsa_rdm_direct", "rsa_rdm_compare", "rsa_spearman_ceiling",
                         "rsa_rdm_spearman_ceiling", "rsa_kendall_tau_a", "rsa_permute_condensed", "rsa_cluster_null",
                         "rsa_row_stats", "rsa_gram_centered", "conv_taps", "conv_taps_backward"}) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}
