// Register-blocked tile kernel of the native attention for work items with many query
// rows (prefill, chunked prefill) over bfloat16 caches on CPUs with AVX512-BF16, and over
// float32 caches on CPUs with AVX512F (the float32 form is described at the end of this list).
//
// Layout: the item's query rows sit in vector lanes (16 rows per vector, row r = lane
// r % 16 of row vector r / 16), so every softmax step is a vertical vector operation
// (no horizontal reductions, no transposes per key):
//   * queries are packed once per item in dot-product pair layout, qp[i][rv] = 16 lanes of
//     (q[r][2i], q[r][2i + 1]);
//   * S^T = K Q^T: each key's dim pair (k[j][2i], k[j][2i + 1]) is broadcast straight from
//     the cache row and meets the packed query pairs in one vdpbf16ps (32 products), for a
//     register tile of KT keys x RV row vectors;
//   * online softmax in float32, base 2, per lane; the accumulator is rescaled only when a
//     row's score exceeds its running maximum by more than 2^RESCALE_SLACK (rare after the
//     first blocks); exp2 by range reduction + polynomial + vscalefps;
//   * P.V: probabilities of key pairs are packed as bfloat16 hi + lo (p = hi + lo to ~2^-17
//     relative, the accuracy of the four-row kernels in attention_rows.h), values are
//     interleaved in key pairs once per block; O^T[c][rv] += bcast(v[2i][c], v[2i+1][c])
//     . (hi, lo) for a register tile of C dims x RV row vectors.
// Work items hold up to MAX_ROWS rows; each key block (32 keys) is read from the cache and
// its values interleaved once per item, then reused by all rows. Every dot-product
// instruction does useful work: QK 4 and P.V 8 cycles per (row, key) at d128 on Zen 4
// (vdpbf16ps zmm 1/cycle), the whole item ~13 (benchmarks/NOTES.md, "#19 prefill").
// Causal / window masks cost a compare per key only on blocks a row vector sees partly.
// The result is left in the caller's per-row state (base-2 max m, sum l, unnormalised
// output acc), so the caller's normalisation and KV-split merge apply unchanged.
// float32 caches: queries one float per lane (qf[i][rv] = 16 rows of q[r][i], pre-scaled),
// S^T by FMAs of each key's broadcast element, P.V by FMAs of each value's broadcast element
// with p in float32: 8 + 8 FMAs per (row, key) at d128, no interleave and no hi / lo split.
// On AMX hosts the bfloat16 form runs its products on the tile unit instead (the AMX section
// below: 128-key blocks, operands in per-row-vector layouts, a decode form for one row vector).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "amx.h"
#include "attention_rows.h"

namespace ascend_ext {
namespace tiles {

// The per-row state of one work item that the kernel reads (queries, visible key ranges)
// and fills (m, l, acc). acc must be zero and m -inf on entry.
struct Item {
  int64_t rows, dim, dim_v, acc_stride;
  const void* q;                    // [rows][q_stride] query rows: raw 16-bit (unscaled) for bfloat16
  int64_t q_stride;                 //   caches, float32 pre-scaled by the softmax scale for float32 ones
  const int64_t *lo, *hi;           // visible keys [lo[r], hi[r]) of row r
  float *m, *l, *acc;               // base-2 running max, sum of p, unnormalised output [rows][acc_stride]
};

// The most rows one fill() of the tile kernel asks of a row source (staging sources size
// their buffers by it).
constexpr int64_t MAX_FILL_KEYS = 128;

// Fewer rows stay on the four-row kernels: at 16 rows both ran even (decode of 4 tokens x
// GQA 4), at 32 rows the tiles were 17% faster (single thread, 4 x 4096 keys, d128).
constexpr int64_t MIN_ROWS = 32;
// On AMX the tiles' cost per key hardly depends on the rows (up to 16), the row kernels' grows
// with them: decode b1 ctx 2k, 8 KV heads, d128 on a 2-core Xeon, AMX vs row kernels: 1 row
// 423 vs 270 us, 4 rows 419 vs 485, 8 rows 414 vs 789 (benchmarks/NOTES.md, "#19 AMX").
constexpr int64_t AMX_MIN_ROWS = 4;
constexpr int64_t MAX_ROWS = 128;  // rows per work item when the tile kernel serves a call

#if defined(__AVX512F__)
constexpr int64_t BLOCK = 32;     // keys per block (16 key pairs)
constexpr int64_t AMX_BLOCK = 128;  // keys per block of the AMX tiles
constexpr int LANES = 16;
constexpr float RESCALE_SLACK = 8.f;  // log2 units

// Where element (index i, row vector v) of a per-row-vector array starts (in elements). The
// AVX-512 tiles interleave the row vectors per index ([i][v][16]: one key's scores for all
// rows in one run); the AMX tiles keep each row vector's run contiguous ([v][i][16]), so every
// tile operand and accumulator is one contiguous 1 KiB block (strided 16-row tiles measured
// ~2x slower per tile product).
struct Layout {
  int64_t index, vec;
  int64_t at(int64_t i, int64_t v) const { return i * index + v * vec; }
  static Layout interleaved(int64_t rvs) { return {rvs * 16, 16}; }
  static Layout by_row_vector(int64_t count) { return {16, count * 16}; }
};

struct Scratch {
  Layout q_at, s_at, p_at, o_at;           // layouts of qp, s, phi / plo, ot
  bool o_rows = false;                     // AMX with one row vector: ot is O, [dim_v / 16][16 rows][16]
  std::vector<uint32_t> qp;                // [dim / 2][row vectors][16] query pairs
  std::vector<float> s;                    // [block][row vectors][16] raw scores q.k
  std::vector<float> ot;                   // [dim_v][row vectors][16] unnormalised output, transposed
  std::vector<float> m, l;                 // [row vectors][16]
  std::vector<int32_t> lo, hi;             // [row vectors][16]
  std::vector<uint32_t> phi, plo;          // [block / 2][row vectors][16] probability pairs
  std::vector<uint16_t> vp;                // [block / 2][2 * dim_v] value pairs
  std::vector<uint16_t> zero;              // a zero row of max(dim, dim_v)
  std::vector<float> qf;                   // float32 caches: [dim][row vectors][16] queries
  std::vector<float> p;                    // float32 caches: [block][row vectors][16] probabilities
  std::vector<uint16_t> kb;                // AMX: [AMX_BLOCK][dim] key rows copied where not evenly strided
  std::vector<uint32_t> vt;                // AMX: [AMX_BLOCK / 32][dim_v][16] value pairs transposed (V^T rows)
  std::vector<uint32_t> pt;                // AMX, o_rows: [AMX_BLOCK / 32][hi, lo][16 rows][16 key pairs]
  const uint16_t* halves[MAX_FILL_KEYS];   // the block's value pairs (block_pairs): in the cache or in vp
  const uint16_t* pair_base[MAX_FILL_KEYS / 32][2];   // AMX: the two halves of 16 pairs per 32-key step as
  int64_t pair_stride[MAX_FILL_KEYS / 32];            //   tile operands, and their row stride in bytes
};

// Pins a loaded vector to a register: without it GCC re-loads the operand before every
// use (one load per vdpbf16ps, which makes the tiles load-bound).
template <typename V>
inline V in_register(V x) {
  asm("" : "+v"(x));
  return x;
}

// Register tiles of A x RV accumulators over rows first + a of a [.][row vectors][16] array.
template <int A, int RV>
inline void load_tile(__m512 (&acc)[A][RV], const float* base, int64_t rvs, int64_t first) {
  for (int a = 0; a < A; ++a)
    for (int v = 0; v < RV; ++v) acc[a][v] = _mm512_loadu_ps(base + ((first + a) * rvs + v) * LANES);
}

template <int A, int RV>
inline void store_tile(const __m512 (&acc)[A][RV], float* base, int64_t rvs, int64_t first) {
  for (int a = 0; a < A; ++a)
    for (int v = 0; v < RV; ++v) _mm512_storeu_ps(base + ((first + a) * rvs + v) * LANES, acc[a][v]);
}

// 2^x per lane, 0 for x <= -150 (and -inf): round-to-nearest range reduction, a degree-6
// polynomial fitted to 2^r on |r| <= 0.5 (relative error < 1e-7), vscalefps for 2^n.
inline __m512 exp2(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-150.f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.5337577e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3399860e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(9.6185198e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.5503290e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(2.4022646e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(6.9314718e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
}

// dst[c * dst_stride + r] = src[r * src_stride + c] for a 16 x 16 block of 32-bit words
// (strides in words): unpack, in-lane shuffle, two 128-bit lane shuffles.
inline void transpose16(const void* src, int64_t src_stride, void* dst, int64_t dst_stride) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(static_cast<const float*>(src) + i * src_stride);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 1] = _mm512_shuffle_ps(t[4 * i], t[4 * i + 2], _MM_SHUFFLE(3, 2, 3, 2));
    r[4 * i + 2] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(1, 0, 1, 0));
    r[4 * i + 3] = _mm512_shuffle_ps(t[4 * i + 1], t[4 * i + 3], _MM_SHUFFLE(3, 2, 3, 2));
  }
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0x88);
      t[8 * i + 4 + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + 4 + j], 0xdd);
    }
  for (int j = 0; j < 8; ++j) {
    _mm512_storeu_ps(static_cast<float*>(dst) + j * dst_stride, _mm512_shuffle_f32x4(t[j], t[8 + j], 0x88));
    _mm512_storeu_ps(static_cast<float*>(dst) + (8 + j) * dst_stride, _mm512_shuffle_f32x4(t[j], t[8 + j], 0xdd));
  }
}

#if defined(__AVX512BF16__)
inline __m512bh as_bh(__m512i x) { return reinterpret_cast<__m512bh>(x); }

inline __m512 dot(__m512 acc, __m512i a, __m512i b) { return _mm512_dpbf16_ps(acc, as_bh(a), as_bh(b)); }

inline __m512i broadcast_pair(const void* p) {
  int32_t x;
  std::memcpy(&x, p, sizeof(x));
  return _mm512_set1_epi32(x);
}

// s[j][rv] = q[rv] . k[j] (raw float32 dots) for KT keys x RV row vectors, over npairs dim pairs.
template <int KT, int RV>
inline void scores_tile(const uint32_t* qp, int64_t rvs, const c10::BFloat16* const* k, int64_t npairs, float* s) {
  __m512 acc[KT][RV] = {};
  for (int64_t i = 0; i < npairs; ++i) {
    __m512i q[RV];
    for (int v = 0; v < RV; ++v) q[v] = in_register(_mm512_loadu_si512(qp + (i * rvs + v) * LANES));
    for (int j = 0; j < KT; ++j) {
      const __m512i kk = broadcast_pair(k[j] + 2 * i);
      for (int v = 0; v < RV; ++v) acc[j][v] = dot(acc[j][v], q[v], kk);
    }
  }
  store_tile(acc, s, rvs, 0);
}

// ot[c][rv] += sum over key pairs i of (hi + lo)[i][rv] . (v[2i][c], v[2i+1][c]) for C dims
// from c0 x RV row vectors.
template <int C, int RV>
inline void values_tile(const uint32_t* phi, const uint32_t* plo, int64_t rvs, const uint16_t* const* halves,
                        int64_t dv, int64_t npairs, int64_t c0, float* ot) {
  __m512 acc[C][RV];
  load_tile(acc, ot, rvs, c0);
  const int64_t half = rows::pair_half(c0, dv), at = rows::pair_offset(c0, dv);   // C <= 16 dims: one half
  for (int64_t i = 0; i < npairs; ++i) {
    __m512i h[RV], l[RV];
    for (int v = 0; v < RV; ++v) {
      h[v] = in_register(_mm512_loadu_si512(phi + (i * rvs + v) * LANES));
      l[v] = in_register(_mm512_loadu_si512(plo + (i * rvs + v) * LANES));
    }
    const uint16_t* row = halves[2 * i + half] + at;
    for (int c = 0; c < C; ++c) {
      const __m512i vv = broadcast_pair(row + 2 * c);
      for (int v = 0; v < RV; ++v) acc[c][v] = dot(dot(acc[c][v], h[v], vv), l[v], vv);
    }
  }
  store_tile(acc, ot, rvs, c0);
}
#endif  // __AVX512BF16__

// float32 caches: s[j][rv] = q[rv] . k[j] for KT keys x RV row vectors over dim elements.
template <int KT, int RV>
inline void scores_tile(const float* qf, int64_t rvs, const float* const* k, int64_t dim, float* s) {
  __m512 acc[KT][RV] = {};
  for (int64_t i = 0; i < dim; ++i) {
    __m512 q[RV];
    for (int v = 0; v < RV; ++v) q[v] = in_register(_mm512_loadu_ps(qf + (i * rvs + v) * LANES));
    for (int j = 0; j < KT; ++j) {
      const __m512 kk = _mm512_set1_ps(k[j][i]);
      for (int v = 0; v < RV; ++v) acc[j][v] = _mm512_fmadd_ps(q[v], kk, acc[j][v]);
    }
  }
  store_tile(acc, s, rvs, 0);
}

// float32 caches: ot[c][rv] += sum over keys j < n of p[j][rv] * v[j][c] for C dims from c0.
template <int C, int RV>
inline void values_tile(const float* p, int64_t rvs, const float* const* v_rows, int64_t n, int64_t c0, float* ot) {
  __m512 acc[C][RV];
  load_tile(acc, ot, rvs, c0);
  for (int64_t j = 0; j < n; ++j) {
    __m512 pj[RV];
    for (int v = 0; v < RV; ++v) pj[v] = in_register(_mm512_loadu_ps(p + (j * rvs + v) * LANES));
    for (int c = 0; c < C; ++c) {
      const __m512 vv = _mm512_set1_ps(v_rows[j][c0 + c]);
      for (int v = 0; v < RV; ++v) acc[c][v] = _mm512_fmadd_ps(pj[v], vv, acc[c][v]);
    }
  }
  store_tile(acc, ot, rvs, c0);
}

// Row vectors go through the tiles in groups of 4, 2 or 1; a group computes the keys
// [0, reach) of the block, reach = the most any of its row vectors sees (causal diagonal).
inline int64_t group_size(int64_t left) { return left >= 4 ? 4 : left >= 2 ? 2 : 1; }

inline int64_t group_reach(const int64_t* reach, int64_t v, int64_t size) {
  return *std::max_element(reach + v, reach + v + size);
}

// Raw scores of the block's keys for row vectors [v0, v1) (reach[v]: keys row vector v needs);
// q: the packed queries (bfloat16 pairs as uint32, or floats), depth: dim pairs or dims.
template <typename T, typename Q>
inline void block_scores(Scratch& w, const Q* q, int64_t rvs, int64_t v0, int64_t v1, const int64_t* reach,
                         const T* const* k, int64_t depth) {
  for (int64_t v = v0; v < v1;) {
    const int64_t size = group_size(v1 - v), n = group_reach(reach, v, size);
    const Q* qv = q + v * LANES;
    float* s = w.s.data() + v * LANES;
    if (size == 4) {
      for (int64_t j = 0; j < n; j += 4) scores_tile<4, 4>(qv, rvs, k + j, depth, s + j * rvs * LANES);
    } else if (size == 2) {
      for (int64_t j = 0; j < n; j += 8) scores_tile<8, 2>(qv, rvs, k + j, depth, s + j * rvs * LANES);
    } else {
      for (int64_t j = 0; j < n; j += 8) scores_tile<8, 1>(qv, rvs, k + j, depth, s + j * rvs * LANES);
    }
    v += size;
  }
}

// P.V tile of C dims from c x RV row vectors from v over the block's first n keys: bfloat16
// caches over the interleaved value pairs (key pairs past n hold p = 0), float32 ones over the
// value rows.
template <int C, int RV, typename T>
inline void value_tile(Scratch& w, int64_t rvs, int64_t v, int64_t n, int64_t dv, int64_t c, const T* const* v_rows) {
  float* ot = w.ot.data() + v * LANES;
  if constexpr (std::is_same_v<T, float>) {
    values_tile<C, RV>(w.p.data() + v * LANES, rvs, v_rows, n, c, ot);
  } else {
#if defined(__AVX512BF16__)
    values_tile<C, RV>(w.phi.data() + v * LANES, w.plo.data() + v * LANES, rvs, w.halves, dv, (n + 1) / 2, c, ot);
#endif
  }
}

// P.V of the block for row vectors [v0, v1).
template <typename T>
inline void block_values(Scratch& w, int64_t rvs, int64_t v0, int64_t v1, const int64_t* reach, int64_t dv,
                         const T* const* v_rows) {
  for (int64_t v = v0; v < v1;) {
    const int64_t size = group_size(v1 - v), n = group_reach(reach, v, size);
    if (size == 4) {
      for (int64_t c = 0; c < dv; c += 4) value_tile<4, 4>(w, rvs, v, n, dv, c, v_rows);
    } else if (size == 2) {
      for (int64_t c = 0; c < dv; c += 8) value_tile<8, 2>(w, rvs, v, n, dv, c, v_rows);
    } else {
      for (int64_t c = 0; c < dv; c += 16) value_tile<16, 1>(w, rvs, v, n, dv, c, v_rows);
    }
    v += size;
  }
}

#if defined(__AVX512BF16__)
// w.halves[2i + h] = half h of value pair i of the block's keys [0, keys) (keys even;
// rows::value_pairs): in place from a cache that stores pairs, else interleaved into w.vp
// (pair i at w.vp + 2 dv i); keys past n are zero.
template <typename T>
inline void block_pairs(Scratch& w, const T* const* v_rows, int64_t keys, int64_t n, int64_t dv, const T* zero,
                        bool stored) {
  rows::value_pairs(v_rows, keys / 2, n, dv, stored, w.vp.data(), zero, w.halves);
}
#endif

#if defined(ASCEND_EXT_AMX)
// ------------------------------------------------------------------ AMX (bfloat16 caches)
// The same products as the vdpbf16ps tiles above, 16 x 16 x 32 per tile instruction, with
// the operands in the layouts the driver already builds, over blocks of AMX_BLOCK keys (each
// accumulator tile is loaded and stored once per block, not once per 32 keys):
//   S^T[16 keys][16 rows] += K[16 keys][32 dims] . qp[16 dim pairs][16 rows]
//     (A: key rows in place when evenly strided, else copied; B: the packed query pairs);
//   O^T[16 dims][16 rows] += V^T[16 dims][32 keys] . (hi, lo)[16 key pairs][16 rows]
//     (A: the block's interleaved value pairs transposed once per block; B: phi / plo).
// Tiles: 0-3 accumulators, 4-7 operands (amx::configure).

// Every tile below is one contiguous 1 KiB block (64-byte rows) except the keys, read from the
// cache at their row stride.
constexpr int64_t TILE_ROW = 64;

// s[j][v + r] = q[v + r] . k[j] (raw float32 dots) for H <= 2 slices of 16 keys (rows of
// k[h], k_stride[h] elements apart) and R <= 2 row vectors from v: a 2 x 2 block of
// accumulators, two A (keys) and two B (query pairs) tiles per 32 dims. s0: the first key's
// scores of row vector 0 (w.s_at: by row vector).
template <int H, int R>
inline void amx_scores(const Scratch& w, const uint16_t* const* k, const int64_t* k_stride, int64_t d, int64_t v,
                       float* s0) {
  static_assert(H >= 1 && H <= 2 && R >= 1 && R <= 2, "a 2 x 2 block of accumulator tiles");
  _tile_zero(0);
  if constexpr (R > 1) _tile_zero(1);
  if constexpr (H > 1) _tile_zero(2);
  if constexpr (H > 1 && R > 1) _tile_zero(3);
  for (int64_t c = 0; c < d; c += 32) {
    const uint32_t* b = w.qp.data() + w.q_at.at(c / 2, v);
    _tile_loadd(4, k[0] + c, k_stride[0] * sizeof(uint16_t));
    _tile_loadd(6, b, TILE_ROW);
    if constexpr (H > 1) _tile_loadd(5, k[1] + c, k_stride[1] * sizeof(uint16_t));
    if constexpr (R > 1) _tile_loadd(7, b + w.q_at.vec, TILE_ROW);
    _tile_dpbf16ps(0, 4, 6);
    if constexpr (R > 1) _tile_dpbf16ps(1, 4, 7);
    if constexpr (H > 1) _tile_dpbf16ps(2, 5, 6);
    if constexpr (H > 1 && R > 1) _tile_dpbf16ps(3, 5, 7);
  }
  float* out = s0 + w.s_at.at(0, v);   // (slice h, row vector v + r) at out + w.s_at.at(16 h, r)
  _tile_stored(0, out, TILE_ROW);
  if constexpr (R > 1) _tile_stored(1, out + w.s_at.at(0, 1), TILE_ROW);
  if constexpr (H > 1) _tile_stored(2, out + w.s_at.at(16, 0), TILE_ROW);
  if constexpr (H > 1 && R > 1) _tile_stored(3, out + w.s_at.at(16, 1), TILE_ROW);
}

// ot[c][v + r] += sum over the block's first 32 * steps keys (key pairs i) of (hi + lo)[i][v + r]
// . (v[2i][c], v[2i+1][c]) for R <= 2 row vectors from v and 2 chunks of 16 dims from c0
// (w.vt: [32-key step][dims][16 key pairs]). A 2 x 2 block of accumulators, as in a GEMM: every
// step loads two A and two B tiles for four tile products, and consecutive products write
// different accumulators.
template <int R>
inline void amx_values(Scratch& w, int64_t v, int64_t c0, int64_t steps, int64_t dv) {
  static_assert(R >= 1 && R <= 2, "a 2 x 2 block of accumulator tiles");
  float* o = w.ot.data() + w.o_at.at(c0, v);   // accumulator (r, c) at o + w.o_at.at(16 c, r)
  const int64_t chunk = w.o_at.at(16, 0), row = w.o_at.at(0, 1);
  _tile_loadd(0, o, TILE_ROW);
  _tile_loadd(1, o + chunk, TILE_ROW);
  if constexpr (R > 1) _tile_loadd(2, o + row, TILE_ROW);
  if constexpr (R > 1) _tile_loadd(3, o + chunk + row, TILE_ROW);
  for (int64_t t = 0; t < steps; ++t) {
    const uint32_t* a = w.vt.data() + (t * dv + c0) * 16;
    _tile_loadd(4, a, TILE_ROW);
    _tile_loadd(5, a + 16 * 16, TILE_ROW);
    for (const uint32_t* p : {w.phi.data(), w.plo.data()}) {
      const uint32_t* b = p + w.p_at.at(16 * t, v);
      _tile_loadd(6, b, TILE_ROW);
      if constexpr (R > 1) _tile_loadd(7, b + w.p_at.vec, TILE_ROW);
      _tile_dpbf16ps(0, 4, 6);
      _tile_dpbf16ps(1, 5, 6);
      if constexpr (R > 1) _tile_dpbf16ps(2, 4, 7);
      if constexpr (R > 1) _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, o, TILE_ROW);
  _tile_stored(1, o + chunk, TILE_ROW);
  if constexpr (R > 1) _tile_stored(2, o + row, TILE_ROW);
  if constexpr (R > 1) _tile_stored(3, o + chunk + row, TILE_ROW);
}

// The distance (in elements) between consecutive rows of rows[0], rows[step], ..., rows[15 step]
// when it is constant, else 0.
template <typename T>
inline int64_t even_stride(const T* const* rows, int step = 1) {
  const int64_t stride = rows[step] - rows[0];
  for (int j = 2; j < 16; ++j)
    if (rows[j * step] - rows[(j - 1) * step] != stride) return 0;
  return stride > 0 ? stride : 0;
}

// w.pair_base[t][h] / w.pair_stride[t] (bytes): half h of the 16 value pairs of 32-key step
// t < steps as one tile operand, in place when both halves are evenly strided alike (a cache
// storing pairs, within a page), else copied to their w.vp slots (2 dv elements apart; slots
// already built there stay).
inline void pair_tiles(Scratch& w, int64_t steps, int64_t dv) {
  const int64_t half_bytes = dv * static_cast<int64_t>(sizeof(uint16_t));
  for (int64_t t = 0; t < steps; ++t) {
    const uint16_t* const* halves = w.halves + 32 * t;
    const int64_t stride = even_stride(halves, 2);
    if (stride != 0 && even_stride(halves + 1, 2) == stride) {
      w.pair_base[t][0] = halves[0];
      w.pair_base[t][1] = halves[1];
      w.pair_stride[t] = stride * static_cast<int64_t>(sizeof(uint16_t));
      continue;
    }
    uint16_t* slots = w.vp.data() + 16 * t * 2 * dv;
    for (int j = 0; j < 32; ++j) {   // half j % 2 of pair j / 2
      uint16_t* slot = slots + j * dv;
      if (halves[j] != slot) std::memcpy(slot, halves[j], half_bytes);
    }
    w.pair_base[t][0] = slots;
    w.pair_base[t][1] = slots + dv;
    w.pair_stride[t] = 2 * half_bytes;
  }
}

// Dims c .. c + 15 of the 16 pairs of 32-key step t (pair_tiles): the start of their tile
// operand in the half that holds them (the halves split at dv / 2, a multiple of 16).
inline const uint16_t* pair_tile_dims(const Scratch& w, int64_t t, int64_t c, int64_t dv) {
  return w.pair_base[t][rows::pair_half(c, dv)] + rows::pair_offset(c, dv);
}

// Raw scores of the block's keys for row vectors [v0, v1): each pair of row vectors takes
// the 16-key slices its reach needs, two at a time.
inline void amx_block_scores(Scratch& w, int64_t v0, int64_t v1, const int64_t* reach,
                             const c10::BFloat16* const* k, int64_t d) {
  const uint16_t* slice_rows[AMX_BLOCK / 16];
  int64_t slice_stride[AMX_BLOCK / 16];
  const int64_t slices = (group_reach(reach, v0, v1 - v0) + 15) / 16;
  for (int64_t h = 0; h < slices; ++h) {
    const c10::BFloat16* const* rows = k + 16 * h;
    slice_stride[h] = even_stride(rows);
    if (slice_stride[h] != 0) {
      slice_rows[h] = reinterpret_cast<const uint16_t*>(rows[0]);
    } else {  // rows across a page boundary (or padding): copied into one tile
      uint16_t* dst = w.kb.data() + 16 * h * d;
      for (int j = 0; j < 16; ++j) std::memcpy(dst + j * d, rows[j], d * sizeof(uint16_t));
      slice_rows[h] = dst;
      slice_stride[h] = d;
    }
  }
  for (int64_t v = v0; v < v1; v += 2) {
    const bool two_rows = v + 1 < v1;
    const int64_t n = group_reach(reach, v, two_rows ? 2 : 1);
    for (int64_t h = 0; h * 16 < n; h += 2) {
      float* s = w.s.data() + w.s_at.at(16 * h, 0);
      const uint16_t* const* k_slices = slice_rows + h;
      const int64_t* strides = slice_stride + h;
      if ((h + 1) * 16 < n) {
        if (two_rows) amx_scores<2, 2>(w, k_slices, strides, d, v, s);
        else amx_scores<2, 1>(w, k_slices, strides, d, v, s);
      } else {
        if (two_rows) amx_scores<1, 2>(w, k_slices, strides, d, v, s);
        else amx_scores<1, 1>(w, k_slices, strides, d, v, s);
      }
    }
  }
}

// P.V of the block's first n keys for row vectors [v0, v1) over w.vt (32-key steps; the pairs
// past n hold p = 0 against zero values).
inline void amx_block_values(Scratch& w, int64_t v0, int64_t v1, int64_t n, int64_t dv) {
  const int64_t steps = (n + 31) / 32;
  for (int64_t v = v0; v < v1; v += 2)
    for (int64_t c = 0; c < dv; c += 32) {   // dv % 32 == 0 (serves)
      if (v + 1 < v1) amx_values<2>(w, v, c, steps, dv);
      else amx_values<1>(w, v, c, steps, dv);
    }
}

// One row vector (decode: the GQA group of a token or a few tokens) takes the other operand
// order, O[16 rows][16 dims] += P[16 rows][32 keys] . V[32 keys][16 dims]: A = the block's
// probability pairs transposed (two 16 x 16 word transposes per 32 keys, where V^T takes eight
// at dv 128 and pays only when many row vectors share it), B = the interleaved value pairs
// [16 key pairs][16 dims x 2] in place. w.ot holds O row-major per 16-dim chunk (w.o_rows).
template <int G>
inline void amx_values_rows(Scratch& w, int64_t c0, int64_t steps, int64_t dv) {
  static_assert(G == 2 || G == 4, "accumulator tiles for 32 or 64 dims");
  float* o = w.ot.data() + c0 * 16;   // chunk g at o + 256 g
  auto chunk = [&](int64_t t, int g) { return pair_tile_dims(w, t, c0 + 16 * g, dv); };   // B of dims c0 + 16 g
  _tile_loadd(0, o, TILE_ROW);
  _tile_loadd(1, o + 256, TILE_ROW);
  if constexpr (G > 2) _tile_loadd(2, o + 512, TILE_ROW);
  if constexpr (G > 2) _tile_loadd(3, o + 768, TILE_ROW);
  for (int64_t t = 0; t < steps; ++t) {
    _tile_loadd(4, w.pt.data() + 2 * t * 256, TILE_ROW);
    _tile_loadd(5, w.pt.data() + (2 * t + 1) * 256, TILE_ROW);
    const int64_t b_stride = w.pair_stride[t];
    _tile_loadd(6, chunk(t, 0), b_stride);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, chunk(t, 1), b_stride);
    _tile_dpbf16ps(0, 5, 6);
    _tile_dpbf16ps(1, 4, 7);
    if constexpr (G > 2) _tile_loadd(6, chunk(t, 2), b_stride);
    _tile_dpbf16ps(1, 5, 7);
    if constexpr (G > 2) {
      _tile_dpbf16ps(2, 4, 6);
      _tile_loadd(7, chunk(t, 3), b_stride);
      _tile_dpbf16ps(2, 5, 6);
      _tile_dpbf16ps(3, 4, 7);
      _tile_dpbf16ps(3, 5, 7);
    }
  }
  _tile_stored(0, o, TILE_ROW);
  _tile_stored(1, o + 256, TILE_ROW);
  if constexpr (G > 2) _tile_stored(2, o + 512, TILE_ROW);
  if constexpr (G > 2) _tile_stored(3, o + 768, TILE_ROW);
}

// The block's value pairs as tile operands (block_pairs, pair_tiles) up to the 32-key step that
// holds key n - 1 (keys past n are zero); returns the number of steps.
template <typename T>
inline int64_t amx_value_steps(Scratch& w, const T* const* v_rows, int64_t n, int64_t dv, const T* zero,
                               bool stored) {
  const int64_t steps = (n + 31) / 32;
  block_pairs(w, v_rows, 32 * steps, n, dv, zero, stored);
  pair_tiles(w, steps, dv);
  return steps;
}

// P.V of the block's first n keys in the decode form: the value pairs, the probability pairs
// transposed, the products.
template <typename T>
inline void amx_block_values_rows(Scratch& w, const T* const* v_rows, int64_t n, int64_t dv, const T* zero,
                                  bool stored) {
  const int64_t steps = amx_value_steps(w, v_rows, n, dv, zero, stored);
  for (int64_t t = 0; t < steps; ++t) {
    transpose16(w.phi.data() + w.p_at.at(16 * t, 0), w.p_at.index, w.pt.data() + 2 * t * 256, 16);
    transpose16(w.plo.data() + w.p_at.at(16 * t, 0), w.p_at.index, w.pt.data() + (2 * t + 1) * 256, 16);
  }
  for (int64_t c = 0; c < dv; c += 64) {   // dv % 32 == 0 (serves)
    if (c + 64 <= dv) amx_values_rows<4>(w, c, steps, dv);
    else amx_values_rows<2>(w, c, steps, dv);
  }
}

// w.vt = the block's values as V^T rows of key pairs, [32-key step][dv][16 key pairs] (the
// steps of amx_value_steps).
template <typename T>
inline void amx_transpose_values(Scratch& w, const T* const* v_rows, int64_t n, int64_t dv, const T* zero,
                                 bool stored) {
  const int64_t steps = amx_value_steps(w, v_rows, n, dv, zero, stored);
  for (int64_t t = 0; t < steps; ++t) {
    const int64_t stride = w.pair_stride[t] / static_cast<int64_t>(sizeof(uint32_t));   // in words
    for (int64_t c = 0; c < dv; c += 16)   // dims c .. c + 15: 16 words of one half
      transpose16(pair_tile_dims(w, t, c, dv), stride, w.vt.data() + (t * dv + c) * 16, 16);
  }
}
#endif  // ASCEND_EXT_AMX

// Online-softmax step of row vector v over keys n0 + [0, n) of the block: masks, running
// max (rescaling ot and l when it grows), p = 2^(s * scale - m) into hi/lo key pairs
// (PAIRS, bfloat16 caches) or float32 p[j] (float32 caches).
template <bool PAIRS>
inline void block_softmax(Scratch& w, int64_t v, int64_t n0, int64_t n, int64_t dv, float q_scale) {
  const float neg_inf = -std::numeric_limits<float>::infinity();
  const __m512i lo = _mm512_loadu_si512(w.lo.data() + v * LANES), hi = _mm512_loadu_si512(w.hi.data() + v * LANES);
  // whole block visible to every lane: no per-key masks
  const bool full = _mm512_cmpgt_epi32_mask(lo, _mm512_set1_epi32(static_cast<int32_t>(n0))) == 0 &&
                    _mm512_cmplt_epi32_mask(hi, _mm512_set1_epi32(static_cast<int32_t>(n0 + n))) == 0;
  const __m512 scale = _mm512_set1_ps(q_scale), minus_inf = _mm512_set1_ps(neg_inf);
  float* s = w.s.data() + w.s_at.at(0, v);
  const int64_t step = w.s_at.index;   // from one key's scores to the next
  // block max of the raw scores (scale > 0); masked scores become -inf in place
  __m512 block_max = minus_inf;
  if (full) {   // four independent max chains (one chain is latency-bound)
    __m512 mx[4] = {minus_inf, minus_inf, minus_inf, minus_inf};
    int64_t j = 0;
    for (; j + 4 <= n; j += 4)
      for (int u = 0; u < 4; ++u) mx[u] = _mm512_max_ps(mx[u], _mm512_loadu_ps(s + (j + u) * step));
    for (; j < n; ++j) mx[0] = _mm512_max_ps(mx[0], _mm512_loadu_ps(s + j * step));
    block_max = _mm512_max_ps(_mm512_max_ps(mx[0], mx[1]), _mm512_max_ps(mx[2], mx[3]));
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const __m512i key = _mm512_set1_epi32(static_cast<int32_t>(n0 + j));
      const __mmask16 seen = _mm512_cmple_epi32_mask(lo, key) & _mm512_cmpgt_epi32_mask(hi, key);
      const __m512 x = _mm512_mask_mov_ps(minus_inf, seen, _mm512_loadu_ps(s + j * step));
      _mm512_storeu_ps(s + j * step, x);
      block_max = _mm512_max_ps(block_max, x);
    }
  }
  block_max = _mm512_mul_ps(block_max, scale);
  __m512 m = _mm512_loadu_ps(w.m.data() + v * LANES);
  const __mmask16 grown =
      _mm512_cmp_ps_mask(block_max, _mm512_add_ps(m, _mm512_set1_ps(RESCALE_SLACK)), _CMP_GT_OQ);
  if (grown) {
    const __m512 m_new = _mm512_mask_mov_ps(m, grown, block_max);
    const __m512 alpha = _mm512_mask_mov_ps(_mm512_set1_ps(1.f), grown, exp2(_mm512_sub_ps(m, m_new)));
    float* l = w.l.data() + v * LANES;
    _mm512_storeu_ps(l, _mm512_mul_ps(_mm512_loadu_ps(l), alpha));
    if (w.o_rows) {   // O row-major per 16-dim chunk: row r scales by lane r of alpha
      alignas(64) float a[LANES];
      _mm512_store_ps(a, alpha);
      for (int64_t c = 0; c < dv; c += LANES)
        for (int r = 0; r < LANES; ++r) {
          float* o = w.ot.data() + (c + r) * LANES;
          _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_loadu_ps(o), _mm512_set1_ps(a[r])));
        }
    } else {
      for (int64_t c = 0; c < dv; ++c) {
        float* ot = w.ot.data() + w.o_at.at(c, v);
        _mm512_storeu_ps(ot, _mm512_mul_ps(_mm512_loadu_ps(ot), alpha));
      }
    }
    m = m_new;
    _mm512_storeu_ps(w.m.data() + v * LANES, m);
  }
  // lanes that have seen nothing yet subtract 0 (their scores are -inf: p = 0)
  const __m512 m_sub = _mm512_mask_mov_ps(m, _mm512_cmp_ps_mask(m, minus_inf, _CMP_EQ_OQ), _mm512_setzero_ps());
  // hi = p rounded to bfloat16 (half away from zero), lo = p - hi rounded the same way;
  // a pair vector takes the upper halves of two keys' words: lane r = (key 2i, key 2i + 1)
  alignas(64) static const uint16_t upper_halves[32] = {1,  33, 3,  35, 5,  37, 7,  39, 9,  41, 11,
                                                        43, 13, 45, 15, 47, 17, 49, 19, 51, 21, 53,
                                                        23, 55, 25, 57, 27, 59, 29, 61, 31, 63};
  const __m512i pick = _mm512_load_si512(upper_halves), half = _mm512_set1_epi32(0x8000);
  const __m512i upper = _mm512_set1_epi32(static_cast<int32_t>(0xffff0000u));
  __m512 sum[2] = {_mm512_loadu_ps(w.l.data() + v * LANES), _mm512_setzero_ps()};
  uint32_t *phi = w.phi.data(), *plo = w.plo.data();
  float* p_out = w.p.data();
  const Layout p_at = w.p_at, s_at = w.s_at;
  auto prob = [&](int64_t j) {
    return j < n ? exp2(_mm512_fmsub_ps(_mm512_loadu_ps(s + j * step), scale, m_sub)) : _mm512_setzero_ps();
  };
  for (int64_t j = 0; j < n; j += 2) {
    const __m512 p0 = prob(j), p1 = prob(j + 1);
    sum[0] = _mm512_add_ps(sum[0], p0);
    sum[1] = _mm512_add_ps(sum[1], p1);
    if constexpr (PAIRS) {
      const __m512i h0 = _mm512_add_epi32(_mm512_castps_si512(p0), half);
      const __m512i h1 = _mm512_add_epi32(_mm512_castps_si512(p1), half);
      const __m512 r0 = _mm512_sub_ps(p0, _mm512_castsi512_ps(_mm512_and_si512(h0, upper)));
      const __m512 r1 = _mm512_sub_ps(p1, _mm512_castsi512_ps(_mm512_and_si512(h1, upper)));
      const __m512i l0 = _mm512_add_epi32(_mm512_castps_si512(r0), half);
      const __m512i l1 = _mm512_add_epi32(_mm512_castps_si512(r1), half);
      const int64_t at = p_at.at(j / 2, v);
      _mm512_storeu_si512(phi + at, _mm512_permutex2var_epi16(h0, pick, h1));
      _mm512_storeu_si512(plo + at, _mm512_permutex2var_epi16(l0, pick, l1));
    } else {
      _mm512_storeu_ps(p_out + s_at.at(j, v), p0);   // float32 p: the layout of s
      if (j + 1 < n) _mm512_storeu_ps(p_out + s_at.at(j + 1, v), p1);
    }
  }
  _mm512_storeu_ps(w.l.data() + v * LANES, _mm512_add_ps(sum[0], sum[1]));
}

// Attention of the item's rows over keys [begin, end) of one KV head (keys/values: row
// sources with fill(first, n, out)). Leaves m, l, acc of every row in `item`.
// Not inlined: once inlined, GCC re-derived the TLS address (a __tls_get_addr call under -fPIC)
// inside the softmax loops instead of keeping the reference.
__attribute__((noinline)) inline Scratch& thread_scratch() {
  thread_local Scratch scratch;  // one TLS lookup per item
  return scratch;
}

// stored_pairs: the value rows are a cache in value_layout "pairs" (rows::value_pairs).
template <typename T, typename Rows>
void attend_tiles(const Item& item, int64_t begin, int64_t end, const Rows& keys, const Rows& values, float q_scale,
                  bool use_amx, bool stored_pairs) {
  constexpr bool BF16 = !std::is_same_v<T, float>;
  Scratch& w = thread_scratch();
  const int64_t rows = item.rows, d = item.dim, dv = item.dim_v;
  const int64_t rvs = (rows + LANES - 1) / LANES, width = rvs * LANES;
  // keys per block: AMX_BLOCK for the AMX tiles, else BLOCK
#if defined(ASCEND_EXT_AMX)
  const int64_t block = use_amx ? AMX_BLOCK : BLOCK;
#else
  const int64_t block = BLOCK;
#endif
  const int64_t words = d * sizeof(T) / sizeof(uint32_t), q_words = item.q_stride * sizeof(T) / sizeof(uint32_t);
  if (use_amx) {
    w.q_at = Layout::by_row_vector(words), w.s_at = Layout::by_row_vector(block);
    w.p_at = Layout::by_row_vector(block / 2), w.o_at = Layout::by_row_vector(dv);
  } else {
    w.q_at = w.s_at = w.p_at = w.o_at = Layout::interleaved(rvs);
  }
  w.o_rows = use_amx && rvs == 1;
  w.s.resize(block * width);
  w.ot.assign(dv * width, 0.f);
  w.m.assign(width, -std::numeric_limits<float>::infinity());
  w.l.assign(width, 0.f);
  // padding lanes (rows past the item's) see every key, so full blocks need no masks;
  // their queries are zero and their results are never read
  w.lo.assign(width, 0);
  w.hi.assign(width, std::numeric_limits<int32_t>::max());
  w.zero.assign(std::max(d, dv) * sizeof(T) / sizeof(uint16_t), 0);
  int32_t *lo = w.lo.data(), *hi = w.hi.data();
  const int64_t full_rows = rows / LANES * LANES;  // whole row vectors move by 16 x 16 transposes
  // queries in lanes: 32-bit words (bfloat16 pairs or floats), word i of row r at
  // packed[w.q_at.at(i, r / 16) + r % 16]
  uint32_t* packed;
  if constexpr (BF16) {
    w.qp.assign(words * width, 0u);
    w.phi.resize(block / 2 * width);
    w.plo.resize(block / 2 * width);
    w.vp.resize(block * dv);
    if (use_amx) {
      w.kb.resize(block * d);
      if (w.o_rows) w.pt.resize(block / 32 * 2 * 256);
      else w.vt.resize(dv * block / 2);
    }
    packed = w.qp.data();
  } else {
    w.qf.assign(words * width, 0.f);
    w.p.resize(block * width);
    packed = reinterpret_cast<uint32_t*>(w.qf.data());
  }
  const auto* q_rows = static_cast<const uint32_t*>(item.q);
  for (int64_t r = 0; r < full_rows; r += LANES)
    for (int64_t i = 0; i < words; i += LANES)
      transpose16(q_rows + r * q_words + i, q_words, packed + w.q_at.at(i, r / LANES), w.q_at.index);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; r >= full_rows && i < words; ++i)
      packed[w.q_at.at(i, r / LANES) + r % LANES] = q_rows[r * q_words + i];
    lo[r] = static_cast<int32_t>(std::max(item.lo[r], begin));
    hi[r] = static_cast<int32_t>(std::min(item.hi[r], end));
  }
  // keys seen by each row vector: [vec_lo, vec_hi) (a superset for window masks: lanes mask)
  std::vector<int64_t> vec_lo(rvs, end), vec_hi(rvs, begin), reach(rvs);
  for (int64_t r = 0; r < rows; ++r) {
    if (hi[r] <= lo[r]) continue;
    vec_lo[r / LANES] = std::min<int64_t>(vec_lo[r / LANES], lo[r]);
    vec_hi[r / LANES] = std::max<int64_t>(vec_hi[r / LANES], hi[r]);
  }
  // blocks of a cache storing value pairs start on a pair (and a 32-key step, so that whole
  // steps within a page are read in place): the lanes mask the keys before `begin`
  int64_t first = *std::min_element(vec_lo.begin(), vec_lo.end());
  if (stored_pairs) first &= ~int64_t{31};
  const int64_t last = *std::max_element(vec_hi.begin(), vec_hi.end());
  const auto* zero = reinterpret_cast<const T*>(w.zero.data());
#if defined(ASCEND_EXT_AMX)
  if (use_amx) amx::configure();
#endif
  constexpr int64_t MAX_BLOCK = std::max(BLOCK, AMX_BLOCK);
  static_assert(MAX_BLOCK <= MAX_FILL_KEYS, "staging row sources hold MAX_FILL_KEYS rows");
  const T* k_rows[MAX_BLOCK];
  const T* v_rows[MAX_BLOCK];
  for (int64_t n0 = first; n0 < last; n0 += block) {
    const int64_t n = std::min(block, last - n0);
    // row vectors that see any key of the block (contiguous for causal and window masks)
    int64_t v0 = rvs, v1 = 0;
    for (int64_t v = 0; v < rvs; ++v) {
      reach[v] = std::clamp<int64_t>(vec_hi[v] - n0, 0, n);
      if (vec_hi[v] > n0 && vec_lo[v] < n0 + n) v0 = std::min(v0, v), v1 = v + 1;
    }
    if (v0 >= v1) continue;
    keys.fill(n0, n, k_rows);
    values.fill(n0, n + (stored_pairs && n % 2), v_rows);   // a cut pair's partner slot too
    for (int64_t j = n; j < block; ++j) k_rows[j] = zero;
    if constexpr (BF16) {
#if defined(ASCEND_EXT_AMX)
      if (use_amx) {
        if (!w.o_rows) amx_transpose_values(w, v_rows, n, dv, zero, stored_pairs);
        amx_block_scores(w, v0, v1, reach.data(), k_rows, d);
      }
#endif
      if (!use_amx) {
        block_pairs(w, v_rows, (n + 1) / 2 * 2, n, dv, zero, stored_pairs);
        block_scores(w, w.qp.data(), rvs, v0, v1, reach.data(), k_rows, words);
      }
    } else {
      block_scores(w, w.qf.data(), rvs, v0, v1, reach.data(), k_rows, words);
    }
    // scores past a group's reach are stale, but every lane masks those keys
    for (int64_t v = v0; v < v1; ++v) block_softmax<BF16>(w, v, n0, n, dv, q_scale);
#if defined(ASCEND_EXT_AMX)
    if constexpr (BF16) {
      if (use_amx) {
        if (w.o_rows) amx_block_values_rows(w, v_rows, n, dv, zero, stored_pairs);
        else amx_block_values(w, v0, v1, n, dv);
        continue;
      }
    }
#endif
    block_values(w, rvs, v0, v1, reach.data(), dv, v_rows);
  }
#if defined(ASCEND_EXT_AMX)
  if (use_amx) amx::release();
#endif
  const float* ot = w.ot.data();
  if (w.o_rows) {   // O row-major per 16-dim chunk
    for (int64_t r = 0; r < rows; ++r) {
      item.m[r] = w.m[r];
      item.l[r] = w.l[r];
      for (int64_t c = 0; c < dv; c += LANES)
        std::memcpy(item.acc + r * item.acc_stride + c, ot + (c + r) * LANES, LANES * sizeof(float));
    }
    return;
  }
  for (int64_t r = 0; r < full_rows; r += LANES)
    for (int64_t c = 0; c < dv; c += LANES)
      transpose16(ot + w.o_at.at(c, r / LANES), w.o_at.index, item.acc + r * item.acc_stride + c, item.acc_stride);
  for (int64_t r = 0; r < rows; ++r) {  // lane r of the transposed state is row r
    item.m[r] = w.m[r];
    item.l[r] = w.l[r];
    float* acc = item.acc + r * item.acc_stride;
    for (int64_t c = 0; r >= full_rows && c < dv; ++c) acc[c] = ot[w.o_at.at(c, r / LANES) + r % LANES];
  }
}
#endif  // __AVX512F__

// Whether the tile kernel serves a call: bfloat16 caches on an AVX512-BF16 build, float32
// caches on an AVX512F build; head dims that are multiples of 32, no softcap.
template <typename T>
bool serves(int64_t dim, int64_t dim_v, float softcap) {
  bool built = false;
#if defined(__AVX512BF16__)
  built = built || std::is_same_v<T, c10::BFloat16>;
#endif
#if defined(__AVX512F__)
  built = built || std::is_same_v<T, float>;
#endif
  return built && softcap <= 0.f && dim % 32 == 0 && dim_v % 32 == 0;
}

// Query rows per work item for a call: more where the tile kernel serves it (each key
// block is read and packed once for more rows), else the caller's default.
template <typename T>
int64_t item_rows(int64_t dim, int64_t dim_v, float softcap, int64_t default_rows) {
  return serves<T>(dim, dim_v, softcap) ? std::max(default_rows, MAX_ROWS) : default_rows;
}

// Whether the bfloat16 tiles run on AMX for this call (amx::usable, read once per call).
template <typename T>
bool uses_amx() {
  return std::is_same_v<T, c10::BFloat16> && amx::usable();
}

// Whether the tile kernel takes a work item of `rows` query rows: a call it serves, at least
// MIN_ROWS rows (AMX_MIN_ROWS on AMX; fewer stay on the caller's row kernels).
template <typename T>
bool takes(int64_t dim, int64_t dim_v, float softcap, int64_t rows, bool amx) {
  return serves<T>(dim, dim_v, softcap) && rows >= (amx ? AMX_MIN_ROWS : MIN_ROWS);
}

// Runs the tile kernel on an item it takes (see takes); returns false to let the caller's row
// kernels run instead. item.q: raw bfloat16 rows, or float32 rows pre-scaled by q_scale (then
// pass q_scale 1).
template <typename T, typename Rows>
bool attend(const Item& item, int64_t begin, int64_t end, const Rows& keys, const Rows& values, float q_scale,
            float softcap, bool amx, bool stored_pairs) {
  if (!takes<T>(item.dim, item.dim_v, softcap, item.rows, amx)) return false;
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) attend_tiles<float>(item, begin, end, keys, values, q_scale, false, false);
#endif
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, c10::BFloat16>)
    attend_tiles<T>(item, begin, end, keys, values, q_scale, amx, stored_pairs);
#endif
  return true;
}

}  // namespace tiles
}  // namespace ascend_ext
