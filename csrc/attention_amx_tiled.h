// AMX attention over a bfloat16 paged cache in kv_layout "tiles" (kv_tiles.h: every 32-key
// step of a block is a run of contiguous 1 KiB B tiles, keys then values): the standard operand
// order, for any number of rows.
//
//   S[M rows][32 keys] = Q[M][d] . K^T      A = query rows (bfloat16, row-major),
//                                           B = the step's key tiles in place;
//   O[M rows][dv]     += P[M][32 keys] . V  A = probabilities (bfloat16 hi + lo, row-major),
//                                           B = the step's value tiles in place.
//
// Tiles hold M = min(16, rows) rows for A and C, so the scores come out one row per vector
// (softmax over 16 keys per vector, no transposes) and no operand is copied except the value
// tiles of a step that a sequence end cuts (keys past `end` may hold anything, NaN included:
// their values are rebuilt as zeros, their scores replaced by -inf). The tile products cost the
// same for 1 or 16 rows on the measured Xeon (16 cycles); what decode pays for is the tile
// loads, which stream best from contiguous tiles.
#pragma once

#include "amx.h"
#include "attention_tiles.h"
#include "kv_tiles.h"

namespace ascend_ext {
namespace amx_tiled {

#if defined(ASCEND_EXT_AMX) && defined(__AVX512BF16__)
constexpr bool BUILT = true;   // this build has the kernel (AMX and AVX512-BF16)
constexpr int64_t STEP = kv_tiles::STEP;   // keys per tile step (two 16-key groups, 16 key pairs)
constexpr int64_t BLOCK = 128;   // keys per softmax block: P.V accumulators load once per block
constexpr int64_t GROUP = 16;    // rows per tile
constexpr int TILE_BYTES = 64;

struct Scratch {
  std::vector<uint16_t> q;         // [row groups x M][d] the item's queries, zero rows past `rows`
  std::vector<float> o;            // [row groups x M][dv] unnormalised output
  std::vector<float> m, l;         // [row groups x M] base-2 running max, sum of p
  // two row groups in flight (pipeline): their raw scores of the block and probabilities
  alignas(64) float s[2][GROUP * BLOCK];
  alignas(64) uint16_t phi[2][GROUP * BLOCK];   // bfloat16 hi and lo
  alignas(64) uint16_t plo[2][GROUP * BLOCK];
  std::vector<uint16_t> cut;       // [32 dv] the value tiles of a cut step, zero past `end`
  std::vector<int64_t> active;     // the row groups that see the current block
};

// The block's 32-key steps: where each step's key tiles and value tiles start.
struct Steps {
  const uint16_t* k[BLOCK / STEP];
  const uint16_t* v[BLOCK / STEP];
};

// Tile configuration: A (0, 1) and C (4, 5) tiles of m rows, B (2, 3) tiles of 16 rows. (Two pairs
// of B tiles taking turns measured no faster: 231 vs 245 us for a 128-row prefill item, decode
// even.)
inline void configure(int m) {
  static const auto configs = [] {
    std::vector<amx::Config> all(GROUP + 1);
    for (int rows = 1; rows <= GROUP; ++rows)
      for (int t = 0; t < 6; ++t) {
        all[rows].colsb[t] = TILE_BYTES;
        all[rows].rows[t] = (t == 2 || t == 3) ? GROUP : rows;
      }
    return all;
  }();
  _tile_loadconfig(&configs[m]);
}

// Raw scores of step t for the m rows at q (row stride d): s[r][32 t + key].
inline void step_scores(const uint16_t* q, int64_t d, const Steps& st, int64_t t, float* s) {
  const int64_t q_bytes = d * 2;
  _tile_zero(4);
  _tile_zero(5);
  for (int64_t c = 0; c < d; c += 32) {   // d % 32 == 0: chunks of 32 dims
    _tile_loadd(0, q + c, q_bytes);
    _tile_loadd(2, st.k[t] + kv_tiles::key_tile(d, 0, c / 32), TILE_BYTES);   // keys 0..15
    _tile_loadd(3, st.k[t] + kv_tiles::key_tile(d, 1, c / 32), TILE_BYTES);   // keys 16..31
    _tile_dpbf16ps(4, 0, 2);
    _tile_dpbf16ps(5, 0, 3);
  }
  _tile_stored(4, s + STEP * t, BLOCK * 4);
  _tile_stored(5, s + STEP * t + 16, BLOCK * 4);
}

// p = 2^(s * scale - m) of 16 keys -> phi / plo (bfloat16 hi + lo); returns p (0 off `mask`).
template <bool MASKED>
inline __m512 probabilities(const float* s, __mmask16 mask, __m512 scale, __m512 m, uint16_t* phi, uint16_t* plo) {
  __m512 p;
  if constexpr (MASKED) {
    p = mask ? _mm512_maskz_mov_ps(mask, tiles::exp2(_mm512_fmsub_ps(_mm512_maskz_loadu_ps(mask, s), scale, m)))
             : _mm512_setzero_ps();
  } else {
    p = tiles::exp2(_mm512_fmsub_ps(_mm512_loadu_ps(s), scale, m));
  }
  const __m256bh h = _mm512_cvtneps_pbh(p);
  const __m512 rest = _mm512_sub_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32(
                                           _mm512_cvtepu16_epi32(reinterpret_cast<__m256i>(h)), 16)));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(phi), reinterpret_cast<__m256i>(h));
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(plo), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(rest)));
  return p;
}

// Online-softmax step of row r over the block's keys n0 + [0, 32 steps): keys outside
// [lo, hi) (and past n) count as -inf; p = 2^(s * scale - m) into phi / plo (bfloat16 hi + lo).
// Rows that see every key of the block (most rows of a prefill) take a path without masks.
inline void row_softmax(Scratch& w, int buf, int64_t r, int64_t at, int64_t n0, int64_t n, int64_t steps,
                        int64_t lo, int64_t hi, int64_t dv, float q_scale) {
  const float* s = w.s[buf] + r * BLOCK;
  uint16_t* phi = w.phi[buf] + r * BLOCK;
  uint16_t* plo = w.plo[buf] + r * BLOCK;
  const int64_t width = STEP * steps;
  const int64_t a = std::clamp<int64_t>(lo - n0, 0, n), b = std::clamp<int64_t>(hi - n0, 0, n);
  if (a >= b) {   // the row sees none of the block's keys
    std::memset(phi, 0, width * 2);
    std::memset(plo, 0, width * 2);
    return;
  }
  const bool full = a == 0 && b == width;
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  auto seen = [&](int64_t j) {   // lanes of keys j .. j + 15 in [a, b)
    const __m512i key = _mm512_add_epi32(lane, _mm512_set1_epi32(static_cast<int32_t>(j)));
    return static_cast<__mmask16>(_mm512_cmpge_epi32_mask(key, _mm512_set1_epi32(static_cast<int32_t>(a))) &
                                  _mm512_cmplt_epi32_mask(key, _mm512_set1_epi32(static_cast<int32_t>(b))));
  };
  __m512 mx[2] = {minus_inf, minus_inf};
  if (full) {
    for (int64_t j = 0; j < width; j += 32)
      mx[0] = _mm512_max_ps(mx[0], _mm512_loadu_ps(s + j)), mx[1] = _mm512_max_ps(mx[1], _mm512_loadu_ps(s + j + 16));
  } else {
    for (int64_t j = a & ~int64_t{15}; j < b; j += 16) mx[0] = _mm512_max_ps(mx[0], _mm512_mask_loadu_ps(minus_inf, seen(j), s + j));
  }
  const float block_max = _mm512_reduce_max_ps(_mm512_max_ps(mx[0], mx[1])) * q_scale;
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
  __m512 sum[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  if (full) {
    for (int64_t j = 0; j < width; j += 32) {
      sum[0] = _mm512_add_ps(sum[0], probabilities<false>(s + j, 0, scale, m_sub, phi + j, plo + j));
      sum[1] = _mm512_add_ps(sum[1], probabilities<false>(s + j + 16, 0, scale, m_sub, phi + j + 16, plo + j + 16));
    }
  } else {
    for (int64_t j = 0; j < width; j += 16)
      sum[0] = _mm512_add_ps(sum[0], probabilities<true>(s + j, seen(j), scale, m_sub, phi + j, plo + j));
  }
  w.l[at] += _mm512_reduce_add_ps(_mm512_add_ps(sum[0], sum[1]));
}

// O[m rows][c0, c0 + 32) += P . V over the block's steps (o: the group's output rows, stride dv).
inline void chunk_values(const uint16_t* phi, const uint16_t* plo, float* o, int64_t dv, const Steps& st,
                         int64_t steps, int64_t c0) {
  const int64_t o_bytes = dv * 4;
  _tile_loadd(4, o + c0, o_bytes);
  _tile_loadd(5, o + c0 + 16, o_bytes);
  for (int64_t t = 0; t < steps; ++t) {
    const uint16_t* b0 = st.v[t] + kv_tiles::value_tile(0, c0 / 16);       // dims c0 .. c0 + 15
    const uint16_t* b1 = st.v[t] + kv_tiles::value_tile(0, c0 / 16 + 1);   // the next 16
    _tile_loadd(0, phi + STEP * t, BLOCK * 2);
    _tile_loadd(1, plo + STEP * t, BLOCK * 2);
    _tile_loadd(2, b0, TILE_BYTES);
    _tile_loadd(3, b1, TILE_BYTES);
    _tile_dpbf16ps(4, 0, 2);
    _tile_dpbf16ps(5, 0, 3);
    _tile_dpbf16ps(4, 1, 2);
    _tile_dpbf16ps(5, 1, 3);
  }
  _tile_stored(4, o + c0, o_bytes);
  _tile_stored(5, o + c0 + 16, o_bytes);
}

// The value tiles of a step (at v) with the keys from `valid` on zeroed, copied to w.cut.
inline const uint16_t* cut_values(Scratch& w, const uint16_t* v, int64_t valid, int64_t dv) {
  w.cut.assign(v, v + STEP * dv);
  for (int64_t ch = 0; ch < dv / 16; ++ch)
    for (int64_t key = valid; key < STEP; ++key)   // (the step's value tiles, from value_tile(d, 0))
      for (int64_t c = 0; c < 16; ++c) w.cut[kv_tiles::value_element(0, key, 16 * ch + c)] = 0;
  return w.cut.data();
}

__attribute__((noinline)) inline Scratch& thread_scratch() {
  thread_local Scratch scratch;
  return scratch;
}

// Attention of the item's rows over keys [begin, end) of one KV head. keys: paged row source
// (fill(first, n, out) -> slot pointers) into the K view of the "tiles" cache. q_scale turns raw
// q.k into base-2 logits. Leaves m, l, acc of every row in `item` (acc zero and m -inf on entry).
template <typename Rows>
void attend(const tiles::Item& item, int64_t begin, int64_t end, const Rows& keys, float q_scale) {
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
      keys.fill(k0, 1, slots);   // the K part of the step's first slot: its region
      st.k[t] = reinterpret_cast<const uint16_t*>(slots[0]);
      st.v[t] = st.k[t] + kv_tiles::value_tile(d, 0);
      if (valid < STEP) st.v[t] = cut_values(w, st.v[t], valid, dv);
    }
    // The row groups that see the block, software-pipelined so that the tile unit works while
    // the vector units run a softmax: during group i's softmax rows, group i-1's P.V chunks and
    // group i+1's score steps are interleaved with them (two buffers of s / p; distinct groups,
    // so a row's rescale never races a pending P.V of its own output).
    std::vector<int64_t>& active = w.active;
    active.clear();
    for (int64_t g = 0; g < groups; ++g) {
      bool any = false;
      for (int64_t r = g * mrows; r < std::min(rows, (g + 1) * mrows); ++r)
        any |= std::max(item.lo[r], begin) < std::min(item.hi[r], end) && item.lo[r] < n0 + n && item.hi[r] > n0;
      if (any) active.push_back(g);
    }
    const int64_t count = static_cast<int64_t>(active.size());
    auto scores_unit = [&](int64_t i, int64_t t) {
      step_scores(w.q.data() + active[i] * mrows * d, d, st, t, w.s[i % 2]);
    };
    auto values_unit = [&](int64_t i, int64_t c0) {
      chunk_values(w.phi[i % 2], w.plo[i % 2], w.o.data() + active[i] * mrows * dv, dv, st, steps, c0);
    };
    for (int64_t t = 0; count > 0 && t < steps; ++t) scores_unit(0, t);
    for (int64_t i = 0; i < count; ++i) {
      const int64_t value_units = i > 0 ? dv / 32 : 0, units = value_units + (i + 1 < count ? steps : 0);
      int64_t done = 0;
      auto tile_work_until = [&](int64_t share) {   // the first `share` tile units of this round
        for (; done < share; ++done) {
          if (done < value_units) values_unit(i - 1, 32 * done);
          else scores_unit(i + 1, done - value_units);
        }
      };
      const int64_t r0 = active[i] * mrows, r1 = std::min(rows, r0 + mrows);
      for (int64_t r = r0; r < r0 + mrows; ++r) {
        if (r < r1)
          row_softmax(w, static_cast<int>(i % 2), r - r0, r, n0, n, steps, std::max(item.lo[r], begin),
                      std::min(item.hi[r], end), dv, q_scale);
        else   // padding rows: p = 0
          std::memset(w.phi[i % 2] + (r - r0) * BLOCK, 0, BLOCK * 2),
              std::memset(w.plo[i % 2] + (r - r0) * BLOCK, 0, BLOCK * 2);
        tile_work_until(units * (r - r0 + 1) / mrows);
      }
    }
    for (int64_t c0 = 0; count > 0 && c0 < dv; c0 += 32) values_unit(count - 1, c0);
  }
  amx::release();
  for (int64_t r = 0; r < rows; ++r) {
    item.m[r] = w.m[r];
    item.l[r] = w.l[r];
    std::memcpy(item.acc + r * item.acc_stride, w.o.data() + r * dv, dv * sizeof(float));
  }
}
#else
constexpr bool BUILT = false;
#endif

}  // namespace amx_tiled
}  // namespace ascend_ext
