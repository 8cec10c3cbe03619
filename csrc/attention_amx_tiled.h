// AMX attention over a bfloat16 paged cache in kv_layout "tiles" (keys stored as AMX B
// operands, values as key pairs): the standard operand order, for any number of rows.
//
//   S[M rows][32 keys] = Q[M][d] . K^T      A = query rows in place (bfloat16, row-major),
//                                           B = the cache's key tiles in place;
//   O[M rows][dv]     += P[M][32 keys] . V  A = probabilities (bfloat16 hi + lo, row-major),
//                                           B = the cache's value pairs in place.
//
// Tiles hold M = min(16, rows) rows for A and C (a decode GQA group of 4 rows costs a quarter
// of a 16-row product), so the scores come out one row per vector (softmax over 16 keys per
// vector, no transposes) and no operand is copied except the value pairs of a 32-key step that a
// sequence end cuts (keys past `end` may hold anything, NaN included: their pairs are rebuilt
// with zeros; their scores are replaced by -inf).
//
// Cache layout (kv_layout.py): block sizes are multiples of 32, so every 32-key step lies in one
// block and its 32 slots are evenly strided. Key tiles: slot j of a 16-key group holds, for each
// 32-dim chunk r, the 64-byte row j of B tile r: keys 0..15 of the group x dims
// (32 r + 2 j, 32 r + 2 j + 1). Value pairs: slots 2i and 2i + 1 hold keys 2i and 2i + 1
// interleaved per dim, dims [0, dv/2) in slot 2i, [dv/2, dv) in slot 2i + 1.
#pragma once

#include "amx.h"
#include "attention_tiles.h"

namespace ascend_ext {
namespace amx_tiled {

#if defined(ASCEND_EXT_AMX) && defined(__AVX512BF16__)
constexpr int64_t STEP = 32;     // keys per tile step (two 16-key groups, 16 key pairs)
constexpr int64_t BLOCK = 128;   // keys per softmax block: P.V accumulators load once per block
constexpr int64_t GROUP = 16;    // rows per tile
constexpr int TILE_BYTES = 64;

struct Scratch {
  std::vector<uint16_t> q;         // [row groups x M][d] the item's queries, zero rows past `rows`
  std::vector<float> o;            // [row groups x M][dv] unnormalised output
  std::vector<float> m, l;         // [row groups x M] base-2 running max, sum of p
  alignas(64) float s[GROUP * BLOCK];         // one row group's raw scores of the block
  alignas(64) uint16_t phi[GROUP * BLOCK];    // its probabilities, bfloat16 hi and lo
  alignas(64) uint16_t plo[GROUP * BLOCK];
  std::vector<uint16_t> cut;       // [32 slots][dv] the value pairs of a cut step, zero past `end`
};

// The block's 32-key steps: where each step's key groups and value pairs start (slot 0 of the
// step) and the bytes from one slot to the next.
struct Steps {
  const uint16_t* k[BLOCK / STEP];
  const uint16_t* v[BLOCK / STEP];
  int64_t k_stride[BLOCK / STEP], v_stride[BLOCK / STEP];
};

// Tile configuration: A (0, 1) and C (4, 5) tiles of m rows, B (2, 3, 6, 7) tiles of 16 rows (two
// pairs of B tiles take turns, so one pair's loads overlap the other's products).
inline void configure(int m) {
  struct alignas(64) Config {
    uint8_t palette = 1, start_row = 0, reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
  };
  static const auto configs = [] {
    std::vector<Config> all(GROUP + 1);
    for (int rows = 1; rows <= GROUP; ++rows)
      for (int t = 0; t < 8; ++t) {
        all[rows].colsb[t] = TILE_BYTES;
        all[rows].rows[t] = (t == 2 || t == 3 || t == 6 || t == 7) ? GROUP : rows;
      }
    return all;
  }();
  _tile_loadconfig(&configs[m]);
}

// Raw scores of `steps` steps for the m rows at q (row stride d): s[r][32 t + key].
inline void block_scores(const uint16_t* q, int64_t d, const Steps& st, int64_t steps, float* s) {
  const int64_t q_bytes = d * 2;
  for (int64_t t = 0; t < steps; ++t) {
    _tile_zero(4);
    _tile_zero(5);
    const uint16_t* k0 = st.k[t];
    const uint16_t* k1 = k0 + 16 * st.k_stride[t] / 2;   // slot 16: the second key group
    for (int64_t c = 0; c < d; c += 64) {   // d % 32 == 0: chunks of 32 dims, two at a time (B in 2, 3 / 6, 7)
      _tile_loadd(0, q + c, q_bytes);
      _tile_loadd(2, k0 + c, st.k_stride[t]);
      _tile_loadd(3, k1 + c, st.k_stride[t]);
      _tile_dpbf16ps(4, 0, 2);
      _tile_dpbf16ps(5, 0, 3);
      if (c + 32 < d) {
        _tile_loadd(1, q + c + 32, q_bytes);
        _tile_loadd(6, k0 + c + 32, st.k_stride[t]);
        _tile_loadd(7, k1 + c + 32, st.k_stride[t]);
        _tile_dpbf16ps(4, 1, 6);
        _tile_dpbf16ps(5, 1, 7);
      }
    }
    _tile_stored(4, s + STEP * t, BLOCK * 4);
    _tile_stored(5, s + STEP * t + 16, BLOCK * 4);
  }
}

// Online-softmax step of row r over the block's keys n0 + [0, 32 steps): keys outside
// [lo, hi) (and past n) count as -inf; p = 2^(s * scale - m) into phi / plo (bfloat16 hi + lo).
inline void row_softmax(Scratch& w, int64_t r, int64_t at, int64_t n0, int64_t n, int64_t steps, int64_t lo,
                        int64_t hi, int64_t dv, float q_scale) {
  const float* s = w.s + r * BLOCK;
  uint16_t* phi = w.phi + r * BLOCK;
  uint16_t* plo = w.plo + r * BLOCK;
  const int64_t width = STEP * steps;
  const int64_t a = std::clamp<int64_t>(lo - n0, 0, n), b = std::clamp<int64_t>(hi - n0, 0, n);
  if (a >= b) {   // the row sees none of the block's keys
    std::memset(phi, 0, width * 2);
    std::memset(plo, 0, width * 2);
    return;
  }
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  auto seen = [&](int64_t j) {   // lanes of keys j .. j + 15 in [a, b)
    const __m512i key = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(j)));
    return static_cast<__mmask16>(_mm512_cmpge_epi32_mask(key, _mm512_set1_epi32(static_cast<int32_t>(a))) &
                                  _mm512_cmplt_epi32_mask(key, _mm512_set1_epi32(static_cast<int32_t>(b))));
  };
  __m512 mx = minus_inf;
  for (int64_t j = a & ~int64_t{15}; j < b; j += 16) mx = _mm512_max_ps(mx, _mm512_mask_loadu_ps(minus_inf, seen(j), s + j));
  const float block_max = _mm512_reduce_max_ps(mx) * q_scale;
  float& m = w.m[at];
  if (block_max > m + tiles::RESCALE_SLACK) {   // rescale the row's state to the new max
    const float alpha = std::exp2(m - block_max);   // 0 when m = -inf
    w.l[at] *= alpha;
    float* o = w.o.data() + at * dv;
    const __m512 f = _mm512_set1_ps(alpha);
    for (int64_t c = 0; c < dv; c += 16) _mm512_storeu_ps(o + c, _mm512_mul_ps(_mm512_loadu_ps(o + c), f));
    m = block_max;
  }
  const __m512 scale = _mm512_set1_ps(q_scale), m_sub = _mm512_set1_ps(m);
  __m512 sum = _mm512_setzero_ps();
  for (int64_t j = 0; j < width; j += 16) {
    const __mmask16 mask = seen(j);
    __m512 p = _mm512_setzero_ps();
    if (mask) p = _mm512_maskz_mov_ps(mask, tiles::exp2(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(mask, s + j), scale, m_sub)));
    sum = _mm512_add_ps(sum, p);
    const __m256bh h = _mm512_cvtneps_pbh(p);
    const __m512 rest = _mm512_sub_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(
                                             _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(h)), 16)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(phi + j), reinterpret_cast<__m256i>(h));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(plo + j), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(rest)));
  }
  w.l[at] += _mm512_reduce_add_ps(sum);
}

// O[m rows][dv] += P . V over the block's steps (o: the group's output rows, stride dv), 32 dims
// at a time.
inline void block_values(const Scratch& w, float* o, int64_t dv, const Steps& st, int64_t steps) {
  const int64_t o_bytes = dv * 4, half = dv / 2;
  for (int64_t c0 = 0; c0 < dv; c0 += 32) {   // dv % 32 == 0
    _tile_loadd(4, o + c0, o_bytes);
    _tile_loadd(5, o + c0 + 16, o_bytes);
    for (int64_t t = 0; t < steps; ++t) {
      // dims c.. c + 15 of the pairs: slot 2i + (c >= dv / 2), element 2 (c mod dv / 2) (at dv 32
      // the two chunks lie in different halves); rows 2 slots apart
      auto pairs = [&](int64_t c) {
        const int64_t h = c >= half;
        return reinterpret_cast<const char*>(st.v[t]) + h * st.v_stride[t] + 4 * (c - h * half);
      };
      const char *b0 = pairs(c0), *b1 = pairs(c0 + 16);
      const int64_t stride = 2 * st.v_stride[t];
      _tile_loadd(0, w.phi + STEP * t, BLOCK * 2);
      _tile_loadd(1, w.plo + STEP * t, BLOCK * 2);
      if (t % 2 == 0) {
        _tile_loadd(2, b0, stride);
        _tile_loadd(3, b1, stride);
        _tile_dpbf16ps(4, 0, 2);
        _tile_dpbf16ps(5, 0, 3);
        _tile_dpbf16ps(4, 1, 2);
        _tile_dpbf16ps(5, 1, 3);
      } else {
        _tile_loadd(6, b0, stride);
        _tile_loadd(7, b1, stride);
        _tile_dpbf16ps(4, 0, 6);
        _tile_dpbf16ps(5, 0, 7);
        _tile_dpbf16ps(4, 1, 6);
        _tile_dpbf16ps(5, 1, 7);
      }
    }
    _tile_stored(4, o + c0, o_bytes);
    _tile_stored(5, o + c0 + 16, o_bytes);
  }
}

// The value pairs of the step at slot `v` (stride bytes apart) with the keys from `valid` on
// zeroed, copied to w.cut; returns its slot 0 (the cut step's slots are dv elements apart).
inline const uint16_t* cut_pairs(Scratch& w, const uint16_t* v, int64_t stride, int64_t valid, int64_t dv) {
  w.cut.resize(STEP * dv);
  for (int64_t slot = 0; slot < STEP; ++slot) {
    uint16_t* dst = w.cut.data() + slot * dv;
    const int64_t pair_keys = std::clamp<int64_t>(valid - slot / 2 * 2, 0, 2);   // keys of the pair kept
    const auto* src = reinterpret_cast<const uint16_t*>(reinterpret_cast<const char*>(v) + slot * stride);
    if (pair_keys == 2) {
      std::memcpy(dst, src, dv * 2);
    } else {
      std::memset(dst, 0, dv * 2);
      for (int64_t e = 0; pair_keys == 1 && e < dv; e += 2) dst[e] = src[e];   // key 2i only
    }
  }
  return w.cut.data();
}

__attribute__((noinline)) inline Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Attention of the item's rows over keys [begin, end) of one KV head. keys / values: paged row
// sources (fill(first, n, out) -> slot pointers) of the "tiles" cache. q_scale turns raw q.k into
// base-2 logits. Leaves m, l, acc of every row in `item` (acc zero and m -inf on entry).
template <typename Rows>
void attend(const tiles::Item& item, int64_t begin, int64_t end, const Rows& keys, const Rows& values, float q_scale) {
  Scratch& w = thread_scratch();
  const int64_t rows = item.rows, d = item.dim, dv = item.dim_v;
  const int64_t mrows = std::min<int64_t>(GROUP, rows), groups = (rows + mrows - 1) / mrows;
  const int64_t padded = groups * mrows;
  w.q.assign(padded * d, 0);
  w.o.assign(padded * dv, 0.f);
  w.m.assign(padded, -std::numeric_limits<float>::infinity());
  w.l.assign(padded, 0.f);
  int64_t first = end, last = begin;
  for (int64_t r = 0; r < rows; ++r) {
    std::memcpy(w.q.data() + r * d, static_cast<const uint16_t*>(item.q) + r * item.q_stride, d * 2);
    const int64_t lo = std::max(item.lo[r], begin), hi = std::min(item.hi[r], end);
    if (lo < hi) first = std::min(first, lo), last = std::max(last, hi);
  }
  first &= ~(STEP - 1);   // steps start on 32-key boundaries (whole steps lie in one cache block)
  configure(static_cast<int>(mrows));
  Steps st;
  const c10::BFloat16* slots[STEP];
  for (int64_t n0 = first; n0 < last; n0 += BLOCK) {
    const int64_t n = std::min(BLOCK, last - n0), steps = (n + STEP - 1) / STEP;
    for (int64_t t = 0; t < steps; ++t) {
      const int64_t k0 = n0 + STEP * t, valid = std::min(STEP, end - k0);
      keys.fill(k0, 2, slots);
      st.k[t] = reinterpret_cast<const uint16_t*>(slots[0]);
      st.k_stride[t] = (slots[1] - slots[0]) * 2;
      values.fill(k0, 2, slots);
      st.v[t] = reinterpret_cast<const uint16_t*>(slots[0]);
      st.v_stride[t] = (slots[1] - slots[0]) * 2;
      if (valid < STEP) st.v[t] = cut_pairs(w, st.v[t], st.v_stride[t], valid, dv), st.v_stride[t] = dv * 2;
    }
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t r0 = g * mrows, r1 = std::min(rows, r0 + mrows);
      bool any = false;
      for (int64_t r = r0; r < r1; ++r) any |= std::max(item.lo[r], begin) < std::min(item.hi[r], end) &&
                                              item.lo[r] < n0 + n && item.hi[r] > n0;
      if (!any) continue;
      block_scores(w.q.data() + r0 * d, d, st, steps, w.s);
      for (int64_t r = r0; r < r0 + mrows; ++r) {
        if (r < r1)
          row_softmax(w, r - r0, r, n0, n, steps, std::max(item.lo[r], begin), std::min(item.hi[r], end), dv,
                      q_scale);
        else   // padding rows: p = 0
          std::memset(w.phi + (r - r0) * BLOCK, 0, BLOCK * 2), std::memset(w.plo + (r - r0) * BLOCK, 0, BLOCK * 2);
      }
      block_values(w, w.o.data() + r0 * dv, dv, st, steps);
    }
  }
  amx::release();
  for (int64_t r = 0; r < rows; ++r) {
    item.m[r] = w.m[r];
    item.l[r] = w.l[r];
    std::memcpy(item.acc + r * item.acc_stride, w.o.data() + r * dv, dv * sizeof(float));
  }
}
#endif

}  // namespace amx_tiled
}  // namespace ascend_ext
