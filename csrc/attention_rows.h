// Row-level SIMD kernels of the native attention: q.k scores and p.V accumulation for
// one query row, or for four rows at once (AVX-512: a block of keys is loaded once for
// four rows and sixteen independent FMA chains hide the latency).
//
// Key and value rows arrive as arrays of row pointers (paged caches are not
// contiguous). float32 rows have a length that is a multiple of 16 (zero-padded when
// widened). bfloat16 paths (AVX512-BF16) read keys in place and values as pairs of
// keys interleaved per dim; they also take float8_e4m3fn rows (kv_dequant::E4M3), widened
// to bfloat16 in registers as they are loaded (exact); probabilities enter p.V as a bfloat16 hi + lo pair, so the
// product keeps float32 accuracy (rounding P to one bfloat16, as GPU FlashAttention
// does, measurably moved a tiny DeepSeek's generations away from vLLM's CPU backend).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "kv_dequant.h"
#include "vec.h"

namespace ascend_ext {
namespace rows {

using vec::f16x;
using vec::kLanes;

// Widen n elements to float32 into dst and zero-pad it to `padded`.
template <typename T>
inline void widen(const T* src, float* dst, int64_t n, int64_t padded) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vec::store(dst + i, vec::load(src + i));
  for (; i < n; ++i) dst[i] = static_cast<float>(src[i]);
  for (; i < padded; ++i) dst[i] = 0.f;
}

// ------------------------------------------------------------------ scores, one row
// s[j] = scale * (q . k[j]) for j < n over float32 rows of length dp. Eight keys per
// pass: each q chunk is loaded once and one transpose-add tree reduces all eight.
inline void scores(const float* q, const float* const* k, int64_t dp, int64_t n, float scale, float* s) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    f16x a[8] = {};
    for (int64_t i = 0; i < dp; i += kLanes) {
      const f16x qv = vec::load(q + i);
      for (int u = 0; u < 8; ++u) a[u] += qv * vec::load(k[j + u] + i);
    }
    const f16x sums = vec::hsum8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]) * scale;
    for (int u = 0; u < 8; ++u) s[j + u] = sums[u];
  }
  for (; j < n; ++j) {
    f16x a{};
    for (int64_t i = 0; i < dp; i += kLanes) a += vec::load(q + i) * vec::load(k[j] + i);
    s[j] = vec::hsum(a) * scale;
  }
}

// ------------------------------------------------------------------ p.V, one row
// acc[0:W*16] += sum_j p[j] * v[j][offset:offset + W*16], W vectors kept in registers.
template <int W>
inline void accumulate_chunk(float* acc, const float* p, const float* const* v, int64_t offset, int64_t n) {
  f16x a[W];
  for (int u = 0; u < W; ++u) a[u] = vec::load(acc + u * kLanes);
  for (int64_t j = 0; j < n; ++j) {
    const f16x pj = vec::splat(p[j]);
    const float* row = v[j] + offset;
    for (int u = 0; u < W; ++u) a[u] += pj * vec::load(row + u * kLanes);
  }
  for (int u = 0; u < W; ++u) vec::store(acc + u * kLanes, a[u]);
}

// acc[0:dvp] += sum_j p[j] * v[j] over float32 rows of length dvp.
inline void accumulate(float* acc, const float* p, const float* const* v, int64_t dvp, int64_t n) {
  int64_t i = 0;
  for (; i + 8 * kLanes <= dvp; i += 8 * kLanes) accumulate_chunk<8>(acc + i, p, v, i, n);
  if (i + 4 * kLanes <= dvp) {
    accumulate_chunk<4>(acc + i, p, v, i, n);
    i += 4 * kLanes;
  }
  for (; i < dvp; i += kLanes) accumulate_chunk<1>(acc + i, p, v, i, n);
}

#if defined(__AVX512F__)
// ------------------------------------------------------------------ four rows
// s[r * s_stride + j] = scale * (q[r] . k[j]), r < 4, j < n (float32 rows of length dp).
inline void scores4(const float* const* q, const float* const* k, int64_t dp, int64_t n, float scale, float* s,
                    int64_t s_stride) {
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    f16x a[16] = {};  // a[4 r + u]: row r, key j + u
    for (int64_t i = 0; i < dp; i += kLanes) {
      const f16x k0 = vec::load(k[j] + i), k1 = vec::load(k[j + 1] + i);
      const f16x k2 = vec::load(k[j + 2] + i), k3 = vec::load(k[j + 3] + i);
      for (int r = 0; r < 4; ++r) {
        const f16x qv = vec::load(q[r] + i);
        a[4 * r] += qv * k0;
        a[4 * r + 1] += qv * k1;
        a[4 * r + 2] += qv * k2;
        a[4 * r + 3] += qv * k3;
      }
    }
    const f16x sums = vec::hsum16(a) * scale;
    for (int r = 0; r < 4; ++r)
      for (int u = 0; u < 4; ++u) s[r * s_stride + j + u] = sums[4 * r + u];
  }
  if (j < n)
    for (int r = 0; r < 4; ++r) scores(q[r], k + j, dp, n - j, scale, s + r * s_stride + j);
}

// acc[r][0:W*16] += sum_j p[r][j] * v[j][offset:], r < 4: each value chunk is loaded once.
template <int W>
inline void accumulate4_chunk(float* const* acc, const float* const* p, const float* const* v, int64_t offset,
                              int64_t n) {
  f16x a[4][W];
  for (int r = 0; r < 4; ++r)
    for (int u = 0; u < W; ++u) a[r][u] = vec::load(acc[r] + offset + u * kLanes);
  for (int64_t j = 0; j < n; ++j) {
    f16x vv[W];
    for (int u = 0; u < W; ++u) vv[u] = vec::load(v[j] + offset + u * kLanes);
    for (int r = 0; r < 4; ++r) {
      const f16x pj = vec::splat(p[r][j]);
      for (int u = 0; u < W; ++u) a[r][u] += pj * vv[u];
    }
  }
  for (int r = 0; r < 4; ++r)
    for (int u = 0; u < W; ++u) vec::store(acc[r] + offset + u * kLanes, a[r][u]);
}

inline void accumulate4(float* const* acc, const float* const* p, const float* const* v, int64_t dvp, int64_t n) {
  int64_t i = 0;
  for (; i + 4 * kLanes <= dvp; i += 4 * kLanes) accumulate4_chunk<4>(acc, p, v, i, n);
  for (; i < dvp; i += kLanes) accumulate4_chunk<1>(acc, p, v, i, n);
}
#endif  // __AVX512F__

#if defined(__AVX512BF16__)
// ------------------------------------------------------------------ bfloat16 (AVX512-BF16)
inline __m512bh load_bf16x32(const void* p) { return reinterpret_cast<__m512bh>(_mm512_loadu_si512(p)); }

// 32 elements of a key or value row as bfloat16: in place, or float8_e4m3fn widened exactly.
inline __m512bh load_row_bf16x32(const c10::BFloat16* p) { return load_bf16x32(p); }
inline __m512bh load_row_bf16x32(const kv_dequant::E4M3* p) {
  return reinterpret_cast<__m512bh>(kv_dequant::e4m3_to_bf16x32(p));
}

inline f16x dot_bf16(f16x acc, __m512bh a, __m512bh b) {
  return reinterpret_cast<f16x>(_mm512_dpbf16_ps(reinterpret_cast<__m512>(acc), a, b));
}

// s[j] = scale * (q . k[j]) over key rows of length d (multiple of 32): bfloat16 read in place,
// or float8_e4m3fn (K) widened on load.
template <typename K>
inline void scores_bf16(const uint16_t* q, const K* const* k, int64_t d, int64_t n, float scale, float* s) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    f16x a[8] = {};
    for (int64_t i = 0; i < d; i += 32) {
      const __m512bh qv = load_bf16x32(q + i);
      for (int u = 0; u < 8; ++u) a[u] = dot_bf16(a[u], qv, load_row_bf16x32(k[j + u] + i));
    }
    const f16x sums = vec::hsum8(a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]) * scale;
    for (int u = 0; u < 8; ++u) s[j + u] = sums[u];
  }
  for (; j < n; ++j) {
    f16x a{};
    for (int64_t i = 0; i < d; i += 32) a = dot_bf16(a, load_bf16x32(q + i), load_row_bf16x32(k[j] + i));
    s[j] = vec::hsum(a) * scale;
  }
}

// R rows at once (R <= 4): s[r * s_stride + j] = scale * (q[r] . k[j]); each key chunk is
// loaded once for the R rows. With `ahead` (rows of the next block, n_ahead of them) each key
// read here prefetches the matching key one block ahead, so the prefetches are spread over
// the scoring work instead of issued in one burst.
template <int R, typename K>
inline void scores_rows_bf16(const uint16_t* const* q, const K* const* k, int64_t d, int64_t n, float scale, float* s,
                             int64_t s_stride, const K* const* ahead = nullptr, int64_t n_ahead = 0) {
  static_assert(R >= 1 && R <= 4, "one 16-way reduction holds four rows x four keys");
  int64_t j = 0;
  for (; j + 4 <= n; j += 4) {
    for (int64_t u = j; u < std::min(j + 4, n_ahead); ++u) vec::prefetch_lines(ahead[u], d * sizeof(K));
    f16x a[16] = {};
    for (int64_t i = 0; i < d; i += 32) {
      const __m512bh k0 = load_row_bf16x32(k[j] + i), k1 = load_row_bf16x32(k[j + 1] + i);
      const __m512bh k2 = load_row_bf16x32(k[j + 2] + i), k3 = load_row_bf16x32(k[j + 3] + i);
      for (int r = 0; r < R; ++r) {
        const __m512bh qv = load_bf16x32(q[r] + i);
        a[4 * r] = dot_bf16(a[4 * r], qv, k0);
        a[4 * r + 1] = dot_bf16(a[4 * r + 1], qv, k1);
        a[4 * r + 2] = dot_bf16(a[4 * r + 2], qv, k2);
        a[4 * r + 3] = dot_bf16(a[4 * r + 3], qv, k3);
      }
    }
    const f16x sums = vec::hsum16(a) * scale;
    for (int r = 0; r < R; ++r)
      for (int u = 0; u < 4; ++u) s[r * s_stride + j + u] = sums[4 * r + u];
  }
  if (j < n)
    for (int r = 0; r < R; ++r) scores_bf16(q[r], k + j, d, n - j, scale, s + r * s_stride + j);
}

template <typename K>
inline void scores4_bf16(const uint16_t* const* q, const K* const* k, int64_t d, int64_t n, float scale, float* s,
                         int64_t s_stride) {
  scores_rows_bf16<4>(q, k, d, n, scale, s, s_stride);
}

// out[2c + t] = row_t[c] (t = 0, 1) for c < dv (multiple of 32): two value rows (bfloat16, or
// float8_e4m3fn widened on load) interleaved so one dot-product lane combines the same dim of
// both keys.
template <typename V>
inline void interleave_pair(const V* a, const V* b, uint16_t* out, int64_t dv) {
  alignas(64) static const uint16_t low[32] = {0, 32, 1, 33, 2, 34, 3, 35, 4, 36, 5, 37, 6, 38, 7, 39,
                                               8, 40, 9, 41, 10, 42, 11, 43, 12, 44, 13, 45, 14, 46, 15, 47};
  alignas(64) static const uint16_t high[32] = {16, 48, 17, 49, 18, 50, 19, 51, 20, 52, 21, 53, 22, 54, 23, 55,
                                                24, 56, 25, 57, 26, 58, 27, 59, 28, 60, 29, 61, 30, 62, 31, 63};
  const __m512i lo_idx = _mm512_load_si512(low), hi_idx = _mm512_load_si512(high);
  for (int64_t c = 0; c < dv; c += 32) {
    const __m512i x = reinterpret_cast<__m512i>(load_row_bf16x32(a + c));
    const __m512i y = reinterpret_cast<__m512i>(load_row_bf16x32(b + c));
    _mm512_storeu_si512(out + 2 * c, _mm512_permutex2var_epi16(x, lo_idx, y));
    _mm512_storeu_si512(out + 2 * c + 32, _mm512_permutex2var_epi16(x, hi_idx, y));
  }
}

// The value pairs of a block's keys [0, 2 * npairs): pair i holds keys 2i and 2i + 1
// interleaved per dim (element 2c + t = v[2i + t][c], 2 * dv elements), as interleave_pair
// writes it and as a cache with value_layout "pairs" stores it: its first half (dims
// [0, dv / 2)) in slot 2i, its second half in slot 2i + 1 (value_layout.py). halves[2i + h]
// points at half h of pair i: the slot rows themselves for a `stored` cache, else the pair
// interleaved into scratch + 2 dv i (halves dv apart); a pair cut by n (key 2i + 1 >= n) or
// past n is built in scratch with zeros for the missing keys (a cache slot past the sequence
// may hold anything, NaN included). Stored pairs need an even first key (the callers align
// their blocks) and, for odd n, v_rows[n] = the partner slot of the last key.
template <typename V>
inline void value_pairs(const V* const* v_rows, int64_t npairs, int64_t n, int64_t dv, bool stored,
                        uint16_t* scratch, const V* zero, const uint16_t** halves) {
  for (int64_t i = 0; i < npairs; ++i) {
    const int64_t j = 2 * i;
    uint16_t* slot = scratch + 2 * dv * i;
    halves[2 * i] = slot;
    halves[2 * i + 1] = slot + dv;
    if constexpr (sizeof(V) == sizeof(uint16_t)) {
      if (stored) {
        if (j + 1 < n) {
          halves[2 * i] = reinterpret_cast<const uint16_t*>(v_rows[j]);
          halves[2 * i + 1] = reinterpret_cast<const uint16_t*>(v_rows[j + 1]);
        } else if (j < n) {   // key 2i only: the low half of every 32-bit word of both slots
          const __m512i even = _mm512_set1_epi32(0xffff);
          for (int h = 0; h < 2; ++h)
            for (int64_t c = 0; c < dv; c += 32)
              _mm512_storeu_si512(slot + h * dv + c, _mm512_and_si512(_mm512_loadu_si512(v_rows[j + h] + c), even));
        } else {
          std::memset(slot, 0, 2 * dv * sizeof(uint16_t));
        }
        continue;
      }
    }
    interleave_pair(j < n ? v_rows[j] : zero, j + 1 < n ? v_rows[j + 1] : zero, slot, dv);
  }
}

// Where dims [c, c + 16) of value pair i start: (half, offset in it), with dv % 32 == 0.
inline int64_t pair_half(int64_t c, int64_t dv) { return 2 * c >= dv ? 1 : 0; }
inline int64_t pair_offset(int64_t c, int64_t dv) { return 2 * c - pair_half(c, dv) * dv; }

// Split float32 p[0:padded) (padded % 16 == 0) into bfloat16 hi + lo with
// hi = bf16(p), lo = bf16(p - hi): hi + lo carries 16 significant bits, so p.V through
// two bf16 dot products keeps float32-level accuracy (|rel err| <~ 2^-16).
inline void split_bf16(const float* p, uint16_t* hi, uint16_t* lo, int64_t padded) {
  for (int64_t j = 0; j < padded; j += kLanes) {
    const __m512 x = _mm512_loadu_ps(p + j);
    const __m256bh h = _mm512_cvtneps_pbh(x);
    const __m512 rest = _mm512_sub_ps(x, _mm512_cvtpbh_ps(h));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(hi + j), reinterpret_cast<__m256i>(h));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lo + j), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(rest)));
  }
}

// acc[r][d_u:d_u + 16] += sum over key pairs i of p[r][2i] v[2i] + p[r][2i+1] v[2i+1] for the
// W dim chunks d_u = dims[u] and R rows, with p[r] = hi[r] + lo[r] (bfloat16 arrays read as
// (2i, 2i+1) pairs).
template <int R, int W>
inline void accumulate_pairs_chunk(float* const* acc, const uint16_t* const* hi, const uint16_t* const* lo,
                                   const uint16_t* const* halves, int64_t dv, const int64_t* dims, int64_t npairs) {
  f16x a[R][W];
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < W; ++u) a[r][u] = vec::load(acc[r] + dims[u]);
  auto broadcast_pair = [](const uint16_t* p, int64_t i) {
    uint32_t pair;
    std::memcpy(&pair, p + 2 * i, sizeof(pair));
    return reinterpret_cast<__m512bh>(_mm512_set1_epi32(static_cast<int>(pair)));
  };
  int64_t half[W], at[W];   // chunk u lies in one half of the pair
  for (int u = 0; u < W; ++u) {
    half[u] = pair_half(dims[u], dv);
    at[u] = pair_offset(dims[u], dv);
  }
  for (int64_t i = 0; i < npairs; ++i) {
    __m512bh vv[W];
    for (int u = 0; u < W; ++u) vv[u] = load_bf16x32(halves[2 * i + half[u]] + at[u]);
    for (int r = 0; r < R; ++r) {
      const __m512bh ph = broadcast_pair(hi[r], i), pl = broadcast_pair(lo[r], i);
      for (int u = 0; u < W; ++u) a[r][u] = dot_bf16(dot_bf16(a[r][u], ph, vv[u]), pl, vv[u]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int u = 0; u < W; ++u) vec::store(acc[r] + dims[u], a[r][u]);
}

// acc[r][0:dv] += p[r] . V for R rows over the value pairs (value_pairs' halves; dv % 32 == 0).
// Each pass reads both halves of every pair (dims c.. and dv / 2 + c..): a pass over one half
// only reads every other slot of a stored pairs cache, which streamed 24% slower past the L2
// (b1 ctx 16k, four-row kernels, benchmarks/NOTES.md "#19 value pairs").
template <int R>
inline void accumulate_pairs(float* const* acc, const uint16_t* const* hi, const uint16_t* const* lo,
                             const uint16_t* const* halves, int64_t dv, int64_t npairs) {
  constexpr int W = R == 1 ? 8 : 4;
  const int64_t mid = dv / 2;
  int64_t c = 0;
  if (mid % (W / 2 * kLanes) == 0) {
    for (; c < mid; c += W / 2 * kLanes) {
      int64_t dims[W];
      for (int u = 0; u < W / 2; ++u) dims[u] = c + u * kLanes, dims[W / 2 + u] = mid + c + u * kLanes;
      accumulate_pairs_chunk<R, W>(acc, hi, lo, halves, dv, dims, npairs);
    }
    return;
  }
  for (; c + W * kLanes <= dv; c += W * kLanes) {
    int64_t dims[W];
    for (int u = 0; u < W; ++u) dims[u] = c + u * kLanes;
    accumulate_pairs_chunk<R, W>(acc, hi, lo, halves, dv, dims, npairs);
  }
  for (; c < dv; c += 2 * kLanes) {
    const int64_t dims[2] = {c, c + kLanes};
    accumulate_pairs_chunk<R, 2>(acc, hi, lo, halves, dv, dims, npairs);
  }
}
#endif  // __AVX512BF16__

}  // namespace rows
}  // namespace ascend_ext
