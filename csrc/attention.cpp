// Native CPU attention kernels of ascend_ext, registered as torch.ops.ascend_ext_native.*.
//
// One core serves both ops. A work item is a group of query rows (the G query heads of
// one KV head times a tile of query tokens, at most 64 rows) over one range of keys.
// Keys stream through in blocks of ~32: row pointers are resolved once per block
// (paged caches are not contiguous), then for every four rows the q.k scores, an
// online-softmax step in float32 (base 2, polynomial exp2) and the p.V accumulation
// run on 16-lane vectors (attention_rows.h), loading each key and value once for the
// four rows. bfloat16 caches use AVX512-BF16 dot products where the CPU has them
// (keys in place; values interleaved in key pairs, p split into bfloat16 hi + lo so
// p.V keeps float32 accuracy), float32 caches are read in place, everything else is widened
// to float32 once per block. Work items (sequence, KV head, query tile, KV split) are
// taken longest first from a shared counter by every intra-op thread; KV splits of long
// contexts (when items are fewer than twice the threads) are merged exactly through
// their log-sum-exp.
//
// Conventions match ascend_ext.ops: bottom-right causal/window alignment, window
// bounds -1 = unbounded, rows that see no key give 0 and lse -inf (lse = the sink with
// sinks: optional per-head logits that join each row's softmax denominator once, at the
// finishing step or in the merge of KV splits), caches
// [num_blocks, block_size, Hkv, D] with any strides and a contiguous head dim, queries
// and outputs [T, H, D] with a contiguous head dim, lse float32 [Hq, T].

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <string>
#include <unistd.h>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <utility>
#include <type_traits>
#include <vector>

#include "attention_amx_tiled.h"
#include "attention_rows.h"
#include "attention_tiles.h"
#include "kv_tiles.h"
#include "kv_dequant.h"
#include "ops_namespace.h"
#include "vec.h"

namespace ascend_ext {
namespace {

using vec::f16x;
using vec::kLanes;

constexpr float NEG_INF = -std::numeric_limits<float>::infinity();
constexpr float LOG2E = 1.4426950408889634f;
constexpr float LN2 = 0.6931471805599453f;
constexpr int64_t MAX_ROWS = 64;   // query rows (tokens x GQA group) per work item

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

struct Window {
  int64_t left;
  int64_t right;
};

// Visible keys [lo, hi) of query row t (bottom-right aligned).
inline void row_bounds(int64_t t, int64_t lq, int64_t lk, Window w, int64_t& lo, int64_t& hi) {
  const int64_t pos = t + lk - lq;
  lo = w.left >= 0 ? std::max<int64_t>(pos - w.left, 0) : 0;
  hi = w.right >= 0 ? std::min<int64_t>(pos + w.right + 1, lk) : lk;
  hi = std::max(hi, lo);
  lo = std::min(lo, lk);
}

// How a block of cached rows reaches the arithmetic.
enum class RowPath {
  Widened,    // widened to a float32 scratch block once, read by every query row
  Direct,     // float32 rows whose length is a multiple of the vector width: read in place
  DotBF16,    // bfloat16 keys read in place by AVX512-BF16 dot products (exact products, fp32 sums)
  PairsBF16,  // bfloat16 values interleaved in key pairs for AVX512-BF16 dot products with the
              // probabilities split into bfloat16 hi + lo (float32-level accuracy)
};

template <typename T>
RowPath key_path(int64_t d) {
  if constexpr (std::is_same_v<T, float>) return d % kLanes == 0 ? RowPath::Direct : RowPath::Widened;
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, c10::BFloat16>) return d % 32 == 0 ? RowPath::DotBF16 : RowPath::Widened;
#endif
  return RowPath::Widened;
}

template <typename T>
RowPath value_path(int64_t dv) {
  if constexpr (std::is_same_v<T, float>) return dv % kLanes == 0 ? RowPath::Direct : RowPath::Widened;
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, c10::BFloat16>) return dv % 32 == 0 ? RowPath::PairsBF16 : RowPath::Widened;
#endif
  return RowPath::Widened;
}

constexpr int64_t MAX_BLOCK_KEYS = 64;
constexpr int64_t QUAD = 4;  // rows handled together by the four-row kernels

// Online-softmax state (base 2) of a group of query rows and its scratch buffers.
// q holds queries pre-scaled so that q.k is in log2 units (unless softcap); q_raw
// holds them unscaled in the input dtype for the in-place dot-product path.
struct RowGroup {
  int64_t rows = 0, dim = 0, dim_v = 0, dp = 0, dvp = 0, keys = 0;
  std::vector<float> q, m, l, acc, kf, vf, s, row_out;
  std::vector<uint16_t> q_raw, v_pairs, p_hi, p_lo, zero_row;
  std::vector<int64_t> lo, hi;
  const float* k_rows[MAX_BLOCK_KEYS];
  const float* v_rows[MAX_BLOCK_KEYS];
  const uint16_t* pair_halves[MAX_BLOCK_KEYS];   // the block's value pairs (rows::value_pairs)

  // streaming: the call's K/V come from DRAM, so blocks are as long as the scratch allows (each
  // block's prefetch burst then keeps more lines in flight; 64 keys measured 1.1x 32 at d128)
  void reset(int64_t r, int64_t d, int64_t dv, bool streaming) {
    rows = r; dim = d; dim_v = dv;
    dp = round_up(d, kLanes);
    dvp = round_up(dv, kLanes);
    keys = streaming ? MAX_BLOCK_KEYS
                     : std::clamp<int64_t>(4096 / std::max(dp, dvp), 16, MAX_BLOCK_KEYS) / kLanes * kLanes;  // ~16 KiB of V
    q.resize(r * dp);
    q_raw.resize(r * d);
    m.assign(r, NEG_INF);
    l.assign(r, 0.f);
    acc.assign(r * dvp, 0.f);
    lo.resize(r);
    hi.resize(r);
    kf.resize(keys * dp);
    vf.resize(keys * dvp);
    s.resize(QUAD * keys);
    row_out.resize(dv);
    v_pairs.resize(keys * dv);
    p_hi.resize(QUAD * keys);
    p_lo.resize(QUAD * keys);
    zero_row.assign(dv, 0);
  }

  bool sees(int64_t r, int64_t n0, int64_t n) const { return hi[r] > n0 && lo[r] < n0 + n; }
};

// Online-softmax step of row r over its scores s[0:n) for keys n0.. (masked in place):
// s becomes the probabilities p[0:padded) (0 where masked or past n), m/l update and
// the accumulator is rescaled. Returns false (p all 0) when no key is visible.
inline bool softmax_row(RowGroup& g, int64_t r, float* s, int64_t n0, int64_t n, float softcap) {
  const int64_t lo = g.lo[r], hi = g.hi[r];
  const int64_t padded = round_up(n, kLanes);
  if (softcap > 0.f)
    for (int64_t j = 0; j < n; ++j) s[j] = softcap * std::tanh(s[j] / softcap) * LOG2E;
  if (lo > n0 || hi < n0 + n)
    for (int64_t j = 0; j < n; ++j)
      if (n0 + j < lo || n0 + j >= hi) s[j] = NEG_INF;
  for (int64_t j = n; j < padded; ++j) s[j] = NEG_INF;
  f16x mx = vec::splat(NEG_INF);
  for (int64_t j = 0; j < padded; j += kLanes) {
    const f16x x = vec::load(s + j);
    mx = x > mx ? x : mx;
  }
  const float block_max = vec::hmax(mx);
  if (block_max == NEG_INF) {
    std::fill(s, s + padded, 0.f);
    return false;
  }
  const float m_new = std::max(g.m[r], block_max);
  const float alpha = g.m[r] == m_new ? 1.f : g.m[r] == NEG_INF ? 0.f : std::exp2(g.m[r] - m_new);
  f16x sum{};
  for (int64_t j = 0; j < padded; j += kLanes) {
    const f16x p = vec::exp2(vec::load(s + j) - m_new);
    vec::store(s + j, p);
    sum += p;
  }
  if (alpha != 1.f) {
    float* acc = g.acc.data() + r * g.dvp;
    for (int64_t i = 0; i < g.dvp; i += kLanes) vec::store(acc + i, vec::load(acc + i) * alpha);
  }
  g.l[r] = g.l[r] * alpha + vec::hsum(sum);
  g.m[r] = m_new;
  return true;
}

// Key/value rows of one KV head of one sequence in a paged cache
// [num_blocks, block_size, Hkv, D] (any strides).
template <typename T>
struct PagedRows {
  using value_type = T;
  const T* base;          // cache + head * stride_head
  const int32_t* table;   // the sequence's block-table row
  int64_t block, stride_block, stride_token;

  // out[j] = row of key first + j, j < n (one division per call, none per row)
  void fill(int64_t first, int64_t n, const T** out) const {
    int64_t blk = first / block, off = first - blk * block;
    const T* row = base + table[blk] * stride_block + off * stride_token;
    for (int64_t j = 0; j < n; ++j) {
      out[j] = row;
      row += stride_token;
      if (++off == block && j + 1 < n) {
        off = 0;
        row = base + table[++blk] * stride_block;
      }
    }
  }
};

// Key/value rows of one KV head of one sequence in a packed [T, Hkv, D] tensor.
template <typename T>
struct PackedRows {
  using value_type = T;
  const T* base;  // first row of the sequence, head applied
  int64_t stride;

  void fill(int64_t first, int64_t n, const T** out) const {
    for (int64_t j = 0; j < n; ++j) out[j] = base + (first + j) * stride;
  }
};

// Point staged[j] at float32 rows of the block: in place, or widened into scratch.
template <typename T>
void stage_rows(const T* const* rows, int64_t n, int64_t dim, int64_t padded, RowPath path, float* scratch,
                const float** staged) {
  for (int64_t j = 0; j < n; ++j) {
    if (path == RowPath::Direct) {
      staged[j] = reinterpret_cast<const float*>(rows[j]);
    } else {
      rows::widen(rows[j], scratch + j * padded, dim, padded);
      staged[j] = scratch + j * padded;
    }
  }
}

#if defined(__AVX512BF16__)
// p.V of rows r0 .. r0 + R over interleaved value pairs, their probabilities s[u] (n keys)
// split into bfloat16 hi + lo in the group's scratch slots 0 .. R - 1.
template <int R>
void accumulate_rows_pairs(RowGroup& g, int64_t r0, float* const* s, int64_t n) {
  float* acc[R];
  const uint16_t *hi[R], *lo[R];
  for (int u = 0; u < R; ++u) {
    acc[u] = g.acc.data() + (r0 + u) * g.dvp;
    hi[u] = g.p_hi.data() + u * g.keys;
    lo[u] = g.p_lo.data() + u * g.keys;
    rows::split_bf16(s[u], g.p_hi.data() + u * g.keys, g.p_lo.data() + u * g.keys, round_up(n, kLanes));
  }
  rows::accumulate_pairs<R>(acc, hi, lo, g.pair_halves, g.dim_v, (n + 1) / 2);
}

// R rows (2..4) of a bfloat16 (or float8_e4m3fn: S) cache over one block: every key and value
// chunk is loaded once for the R rows (a GQA group of 7 runs as 4 + 3, not 4 + 1 + 1 + 1).
template <int R, typename S>
void attend_rows_bf16(RowGroup& g, int64_t r0, int64_t n0, int64_t n, const S* const* k_raw, float kscale,
                      float softcap, const S* const* k_ahead, int64_t n_ahead) {
  float* s[R];
  const uint16_t* qb[R];
  for (int u = 0; u < R; ++u) {
    s[u] = g.s.data() + u * g.keys;
    qb[u] = g.q_raw.data() + (r0 + u) * g.dim;
  }
  rows::scores_rows_bf16<R>(qb, k_raw, g.dim, n, kscale, s[0], g.keys, k_ahead, n_ahead);
  bool any = false;
  for (int u = 0; u < R; ++u) any |= softmax_row(g, r0 + u, s[u], n0, n, softcap);
  if (any) accumulate_rows_pairs<R>(g, r0, s, n);
}
#endif

// One block of n keys (n0..) for rows [r0, r0 + count): scores, softmax, p.V. Groups of
// 2-4 rows of a bfloat16 cache, and of four rows otherwise, load each key and value once
// for all rows; single rows take the one-row kernels. k_raw holds rows of the stored type S:
// T, or float8_e4m3fn under bfloat16 math (bfloat16 key / value paths only, widened on load).
template <typename T, typename S>
void attend_block(RowGroup& g, int64_t r0, int64_t count, int64_t n0, int64_t n, const S* const* k_raw,
                  RowPath kpath, RowPath vpath, float q_scale, float softcap, const S* const* k_ahead,
                  int64_t n_ahead) {
  float* s[QUAD];
  for (int64_t u = 0; u < count; ++u) s[u] = g.s.data() + u * g.keys;
  [[maybe_unused]] const bool bf16_keys = kpath == RowPath::DotBF16, bf16_values = vpath == RowPath::PairsBF16;
  const float kscale = bf16_keys ? q_scale : 1.f;  // float rows hold pre-scaled queries
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (bf16_keys && bf16_values && count > 1) {
      if (count == 2) return attend_rows_bf16<2>(g, r0, n0, n, k_raw, kscale, softcap, k_ahead, n_ahead);
      if (count == 3) return attend_rows_bf16<3>(g, r0, n0, n, k_raw, kscale, softcap, k_ahead, n_ahead);
      return attend_rows_bf16<4>(g, r0, n0, n, k_raw, kscale, softcap, k_ahead, n_ahead);
    }
  }
#endif
#if defined(__AVX512F__)
  if (count == QUAD) {
    const float* qf[QUAD];
    const uint16_t* qb[QUAD];
    for (int u = 0; u < QUAD; ++u) {
      qf[u] = g.q.data() + (r0 + u) * g.dp;
      qb[u] = g.q_raw.data() + (r0 + u) * g.dim;
    }
#if defined(__AVX512BF16__)
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      if (bf16_keys) rows::scores4_bf16(qb, k_raw, g.dim, n, kscale, s[0], g.keys);
    }
#endif
    if (!bf16_keys) rows::scores4(qf, g.k_rows, g.dp, n, kscale, s[0], g.keys);
    bool any = false;
    for (int u = 0; u < QUAD; ++u) any |= softmax_row(g, r0 + u, s[u], n0, n, softcap);
    if (!any) return;
#if defined(__AVX512BF16__)
    if (bf16_values) return accumulate_rows_pairs<QUAD>(g, r0, s, n);
#endif
    float* acc[QUAD];
    for (int u = 0; u < QUAD; ++u) acc[u] = g.acc.data() + (r0 + u) * g.dvp;
    const float* ps[QUAD] = {s[0], s[1], s[2], s[3]};
    rows::accumulate4(acc, ps, g.v_rows, g.dvp, n);
    return;
  }
#endif
  for (int64_t u = 0; u < count; ++u) {
    const int64_t r = r0 + u;
    if (!g.sees(r, n0, n)) continue;
#if defined(__AVX512BF16__)
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      if (bf16_keys) rows::scores_bf16(g.q_raw.data() + r * g.dim, k_raw, g.dim, n, kscale, s[u]);
    }
#endif
    if (!bf16_keys) rows::scores(g.q.data() + r * g.dp, g.k_rows, g.dp, n, kscale, s[u]);
    if (!softmax_row(g, r, s[u], n0, n, softcap)) continue;
#if defined(__AVX512BF16__)
    if (bf16_values) {
      accumulate_rows_pairs<1>(g, r, &s[u], n);
      continue;
    }
#endif
    rows::accumulate(g.acc.data() + r * g.dvp, s[u], g.v_rows, g.dvp, n);
  }
}

inline void prefetch_each(const void* const* rows, int64_t n, int64_t bytes) {
  for (int64_t j = 0; j < n; ++j) vec::prefetch_lines(rows[j], bytes);
}

// Stream keys [begin, end) through the group, one block of g.keys keys at a time.
//
// With `prefetch` (the call's K/V outgrow the last-level cache) every block prefetches the
// next one: the hardware prefetchers stop at each 4 KiB page of the paged cache, and demand
// misses alone left the core waiting (decode read the cache at ~40% of the DRAM rate). The
// common decode case (bfloat16, GQA groups of two or more rows) spreads the prefetches over the work,
// one key or value row ahead per row read; other paths prefetch the next block's keys when
// a block starts and its values when it ends. Measured on one thread, b4 x ctx 16k, 32/8
// heads, d128 (benchmarks/NOTES.md): 11.6 GB/s before, 14-17 with per-block bursts, 18 with
// the spread (24 with transparent huge pages); NTA hints and two blocks ahead were slower.
// Row sources whose fill() writes staging rows (kv_dequant::DequantRows): they prefetch the
// stored rows through prefetch(first, n), in one burst per block. Rows stored as float8_e4m3fn
// under bfloat16 math (Rows::value_type != T) reach the bfloat16 kernels unstaged, widened in
// registers as they are loaded; the caller sends them only where both bfloat16 paths apply.
using kv_dequant::is_staged;

// stored_pairs: the value rows are a cache in value_layout "pairs" (rows::value_pairs; begin
// is even, and blocks stay on even keys).
template <typename T, typename Rows>
void attend_range(RowGroup& g, int64_t begin, int64_t end, const Rows& keys, const Rows& values, float q_scale,
                  float softcap, bool prefetch, bool stored_pairs) {
  constexpr bool staged = is_staged<Rows>::value;
  using S = typename Rows::value_type;   // the stored row type
  int64_t min_lo = end, max_hi = begin;
  for (int64_t r = 0; r < g.rows; ++r) {
    if (g.hi[r] > g.lo[r]) {
      min_lo = std::min(min_lo, g.lo[r]);
      max_hi = std::max(max_hi, g.hi[r]);
    }
  }
  begin = std::max(begin, min_lo);
  if (stored_pairs) begin &= ~int64_t{1};   // the key before min_lo is masked for every row
  end = std::min(end, max_hi);
  const RowPath kpath = key_path<T>(g.dim), vpath = value_path<T>(g.dim_v);
  if constexpr (!std::is_same_v<S, T>)
    TORCH_CHECK(kpath == RowPath::DotBF16 && vpath == RowPath::PairsBF16, "widening on load needs the bfloat16 paths");
  TORCH_CHECK(!stored_pairs || vpath == RowPath::PairsBF16, "value_layout 'pairs' needs the bfloat16 pair kernels");
  const S* k_raw[MAX_BLOCK_KEYS];
  const S* v_raw[MAX_BLOCK_KEYS];
  const S* k_ahead[MAX_BLOCK_KEYS];
  const S* v_ahead[MAX_BLOCK_KEYS];
  // spread prefetch: keys by the multi-row bf16 scores, values by the pair interleave
  const bool spread = !staged && g.rows > 1 && kpath == RowPath::DotBF16 && vpath == RowPath::PairsBF16;
  const int64_t k_bytes = g.dim * sizeof(S), v_bytes = g.dim_v * sizeof(S);
  for (int64_t n0 = begin; n0 < end; n0 += g.keys) {
    const int64_t n = std::min(g.keys, end - n0);
    keys.fill(n0, n, k_raw);
    values.fill(n0, n + (stored_pairs && n % 2), v_raw);   // a cut pair's partner slot too
    // stored pairs are read by the p.V loop itself (no interleave pass that streams them in
    // first): their lines are requested here, ahead of the scores
    if (stored_pairs && !prefetch)
      prefetch_each(reinterpret_cast<const void* const*>(v_raw), n, g.dim_v * static_cast<int64_t>(sizeof(S)));
    const int64_t n_ahead = prefetch ? std::clamp<int64_t>(end - n0 - n, 0, g.keys) : 0;
    if (n_ahead > 0) {
      if constexpr (staged) {
        keys.prefetch(n0 + n, n_ahead);
        values.prefetch(n0 + n, n_ahead);
      } else {
        keys.fill(n0 + n, n_ahead, k_ahead);
        values.fill(n0 + n, n_ahead, v_ahead);
        if (!spread) prefetch_each(reinterpret_cast<const void* const*>(k_ahead), n_ahead, k_bytes);
      }
    }
    if constexpr (std::is_same_v<S, T>) {
      if (kpath != RowPath::DotBF16) stage_rows(k_raw, n, g.dim, g.dp, kpath, g.kf.data(), g.k_rows);
      if (vpath != RowPath::PairsBF16) stage_rows(v_raw, n, g.dim_v, g.dvp, vpath, g.vf.data(), g.v_rows);
    }
#if defined(__AVX512BF16__)
    if constexpr (std::is_same_v<T, c10::BFloat16>) {
      if (vpath == RowPath::PairsBF16) {
        const auto* zero = reinterpret_cast<const S*>(g.zero_row.data());   // dv zero elements
        for (int64_t j = 0; j < n; j += 2) {
          if (spread) prefetch_each(reinterpret_cast<const void* const*>(v_ahead + j),
                                    std::clamp<int64_t>(n_ahead - j, 0, 2), v_bytes);
          rows::value_pairs(v_raw + j, 1, n - j, g.dim_v, stored_pairs, g.v_pairs.data() + j * g.dim_v, zero,
                            g.pair_halves + j);
        }
      }
    }
#endif
    for (int64_t r0 = 0; r0 < g.rows; r0 += QUAD) {
      const int64_t count = std::min(QUAD, g.rows - r0);
      bool any = false;
      for (int64_t r = r0; r < r0 + count; ++r) any |= g.sees(r, n0, n);
      if (any) attend_block<T, S>(g, r0, count, n0, n, k_raw, kpath, vpath, q_scale, softcap, k_ahead,
                               spread && r0 == 0 ? n_ahead : 0);
    }
    if (!staged && !spread) prefetch_each(reinterpret_cast<const void* const*>(v_ahead), n_ahead, v_bytes);
  }
}

// Joins a sink logit (base 2; NEG_INF = none) to a softmax state (max m, sum l): the sink
// is a virtual key of value 0, so only the sum grows. Returns the factor that rescales the
// accumulator to the new max (0 when the state saw no key).
inline float add_sink(float& m, float& l, float sink2) {
  if (sink2 == NEG_INF) return 1.f;
  const float m_new = std::max(m, sink2);
  const float keep = m == NEG_INF ? 0.f : std::exp2(m - m_new);
  l = l * keep + std::exp2(sink2 - m_new);
  m = m_new;
  return keep;
}

// Normalised output row and base-2 lse of row r (0 / -inf when it saw nothing), with the
// row's sink (base 2, NEG_INF = none) in the denominator: a row that saw no key then
// gives 0 and lse = sink.
inline float finish_row(const RowGroup& g, int64_t r, float* out_row, float sink2) {
  float m = g.m[r], l = g.l[r];
  const float keep = add_sink(m, l, sink2);
  const float* acc = g.acc.data() + r * g.dvp;
  if (l <= 0.f) {
    std::fill(out_row, out_row + g.dim_v, 0.f);
    return NEG_INF;
  }
  const float inv = keep / l;
  for (int64_t c = 0; c < g.dim_v; ++c) out_row[c] = acc[c] * inv;
  return m + std::log2(l);
}

struct Problem {
  // queries [T, Hq, D]; output [T, Hq, Dv]; lse [Hq, T] (optional)
  int64_t hq, hkv, group, dim, dim_v;
  int64_t q_stride_t, q_stride_h, o_stride_t, o_stride_h;
  float scale, softcap;
  Window window;
  bool prefetch;                  // the call's K/V outgrow the last-level cache: stream with software prefetch
  bool value_pairs = false;       // the value cache stores key pairs interleaved (kv_layout "pairs")
  bool kv_tiles = false;          // the caches are in kv_layout "tiles" (kv_tiles.h)
  const float* sinks = nullptr;   // per query head sink logits (natural log), or none
  // per KV head factors of a quantised cache read as its stored values (kv_dequant.h): the
  // scores are multiplied by key_factor[h], the outputs by value_factor[h]; none = 1
  const float* key_factor = nullptr;
  const float* value_factor = nullptr;

  // base-2 sink of query head h (NEG_INF without sinks)
  float sink2(int64_t head) const { return sinks ? sinks[head] * LOG2E : NEG_INF; }
};

// Row sources of a kv_layout "tiles" cache (kv_tiles::StagedRows): items the AMX tiled kernel
// takes read the cache in place through the key source's pointers, other items read staged rows.
template <typename R>
struct is_tiles_rows : std::false_type {};
template <typename S>
struct is_tiles_rows<kv_tiles::StagedRows<S>> : std::true_type {};

// Whether the AMX kernel over the "tiles" layout (attention_amx_tiled.h) takes a call: built,
// AMX usable (`amx`, read once per call), no softcap, head dims multiples of 32.
inline bool amx_tiled_takes(int64_t dim, int64_t dim_v, float softcap, bool amx) {
  return amx_tiled::BUILT && amx && softcap <= 0.f && dim % 32 == 0 && dim_v % 32 == 0;
}

struct WorkItem {
  int64_t b, h, t0, t1, split, cost;
};

// Work items (sequence, KV head, query tile, KV split), most expensive first. Long
// contexts are split when there are too few items to keep every thread busy.
std::vector<WorkItem> plan_work(const Problem& p, const std::vector<int64_t>& q_len, const std::vector<int64_t>& k_len,
                                int64_t tokens_per_tile, int64_t& splits) {
  const int64_t threads = at::get_num_threads();
  int64_t items = 0, max_k = 0;
  for (size_t b = 0; b < q_len.size(); ++b) {
    items += p.hkv * ((q_len[b] + tokens_per_tile - 1) / tokens_per_tile);
    max_k = std::max(max_k, k_len[b]);
  }
  splits = 1;
  if (items > 0 && items < 2 * threads && max_k >= 1024)
    splits = std::max<int64_t>(1, std::min<int64_t>((2 * threads + items - 1) / items, max_k / 512));
  std::vector<WorkItem> work;
  work.reserve(items * splits);
  for (size_t b = 0; b < q_len.size(); ++b)
    for (int64_t h = 0; h < p.hkv; ++h)
      for (int64_t t0 = 0; t0 < q_len[b]; t0 += tokens_per_tile)
        for (int64_t sp = 0; sp < splits; ++sp) {
          const int64_t t1 = std::min(q_len[b], t0 + tokens_per_tile);
          work.push_back({static_cast<int64_t>(b), h, t0, t1, sp, (t1 - t0) * (k_len[b] / splits + 1)});
        }
  return work;
}

// One State per thread for the process's lifetime: its scratch buffers keep their capacity
// from call to call (allocating and zeroing them per call cost ~2 us per work item at decode
// sizes). Not inlined, so the TLS address is derived once per call (tiles::thread_scratch).
template <typename State>
__attribute__((noinline)) State& thread_state() {
  thread_local State state;
  return state;
}

// Runs fn(state, item index) over all items on every intra-op thread, each taking the
// next item from a shared counter (longest items are listed first) so uneven contexts
// balance; each thread owns one State (scratch buffers reused across its items and calls).
template <typename State, typename Fn>
void for_each_item(int64_t count, Fn fn) {
  std::atomic<int64_t> next{0};
  const int64_t threads = std::min<int64_t>(at::get_num_threads(), count);
  at::parallel_for(0, threads, 1, [&](int64_t first, int64_t last) {
    State& state = thread_state<State>();
    for (int64_t worker = first; worker < last; ++worker)
      for (int64_t i = next++; i < count; i = next++) fn(state, i);
  });
}

// Per sequence: (query start, query count, key count); rows_of(b, h) gives the
// (keys, values) rows of sequence b, KV head h.
template <typename T, typename RowsOf>
void run(const Problem& p, const T* q, T* out, float* lse, int64_t total_tokens, const std::vector<int64_t>& q_start,
         const std::vector<int64_t>& q_len, const std::vector<int64_t>& k_len, RowsOf rows_of) {
  const int64_t tokens_per_tile =
      std::max<int64_t>(1, tiles::item_rows<T>(p.dim, p.dim_v, p.softcap, MAX_ROWS) / p.group);
  int64_t splits = 1;
  std::vector<WorkItem> work = plan_work(p, q_len, k_len, tokens_per_tile, splits);
  // keep the splits of one (sequence, head, tile) adjacent for the merge, longest tiles first
  std::vector<int64_t> order(work.size() / std::max<int64_t>(splits, 1));
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int64_t>(i);
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return work[a * splits].cost > work[b * splits].cost; });
  const float call_q_scale = p.softcap > 0.f ? p.scale : p.scale * LOG2E;
  const bool amx = tiles::uses_amx<T>();   // read once per call
  const int64_t max_rows = tokens_per_tile * p.group;
  std::vector<float> part_out(splits > 1 ? work.size() * max_rows * p.dim_v : 0);
  std::vector<float> part_lse(splits > 1 ? work.size() * max_rows : 0);

  auto store_row = [&](int64_t b, int64_t t, int64_t head, const float* row, float lse2) {
    const int64_t token = q_start[b] + t;
    T* o = out + token * p.o_stride_t + head * p.o_stride_h;
    for (int64_t c = 0; c < p.dim_v; ++c) o[c] = static_cast<T>(row[c]);
    if (lse) lse[head * total_tokens + token] = lse2 == NEG_INF ? NEG_INF : lse2 * LN2;
  };

  for_each_item<RowGroup>(static_cast<int64_t>(work.size()), [&](RowGroup& g, int64_t i) {
    const int64_t w = order[i / splits] * splits + i % splits;
    const WorkItem& it = work[w];
    const int64_t rows = (it.t1 - it.t0) * p.group;
    const float q_scale = p.key_factor != nullptr ? call_q_scale * p.key_factor[it.h] : call_q_scale;
    g.reset(rows, p.dim, p.dim_v, p.prefetch);
    const auto [keys, values] = rows_of(it.b, it.h);
    // the tile kernel takes raw 16-bit queries, or the float32 ones already scaled; the row
    // kernels take scaled float32 ones (not needed when the tile kernel takes 16-bit rows)
    constexpr bool raw_q = sizeof(T) == sizeof(uint16_t);
    constexpr bool rows_of_t = std::is_same_v<typename std::decay_t<decltype(keys)>::value_type, T>;
    constexpr bool tiles_rows = is_tiles_rows<std::decay_t<decltype(keys)>>::value;
    const bool amx_tiled = tiles_rows && amx_tiled_takes(p.dim, p.dim_v, p.softcap, amx);
    const bool raw_tiles = raw_q && (amx_tiled || (rows_of_t && tiles::takes<T>(p.dim, p.dim_v, p.softcap, rows, amx)));
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t t = it.t0 + r / p.group;
      const int64_t head = it.h * p.group + r % p.group;
      const T* qr = q + (q_start[it.b] + t) * p.q_stride_t + head * p.q_stride_h;
      if (!raw_tiles) {
        float* qd = g.q.data() + r * g.dp;
        rows::widen(qr, qd, p.dim, g.dp);
        for (int64_t c = 0; c < p.dim; ++c) qd[c] *= q_scale;
      }
      if constexpr (raw_q) std::memcpy(g.q_raw.data() + r * p.dim, qr, p.dim * sizeof(T));
      row_bounds(t, q_len[it.b], k_len[it.b], p.window, g.lo[r], g.hi[r]);
    }
    // splits of a cache storing value pairs start on whole 32-key steps (pairs and AMX tiles; a
    // "tiles" cache's 32-key steps lie in one block)
    const int64_t chunk = round_up((k_len[it.b] + splits - 1) / splits, p.value_pairs || p.kv_tiles ? 32 : 1);
    const int64_t k0 = std::min(k_len[it.b], it.split * chunk);
    const int64_t k1 = std::min(k_len[it.b], k0 + chunk);
    const void* tile_q = raw_q ? static_cast<const void*>(g.q_raw.data()) : g.q.data();
    const tiles::Item tile_item{rows, p.dim, p.dim_v, g.dvp, tile_q, raw_q ? p.dim : g.dp,
                                g.lo.data(), g.hi.data(), g.m.data(), g.l.data(), g.acc.data()};
    bool tiled = false;   // many rows: the tile kernel (rows stored as T only)
#if defined(ASCEND_EXT_AMX) && defined(__AVX512BF16__)
    if constexpr (tiles_rows) {
      if (amx_tiled) amx_tiled::attend(tile_item, k0, k1, keys.source, q_scale);
      tiled = amx_tiled;
    }
#endif
    if constexpr (rows_of_t)
      if (!tiled)
        tiled = tiles::attend<T>(tile_item, k0, k1, keys, values, raw_q ? q_scale : 1.f, p.softcap, amx,
                                 p.value_pairs);
    if (!tiled) attend_range<T>(g, k0, k1, keys, values, q_scale, p.softcap, p.prefetch, p.value_pairs);
    const float value_factor = p.value_factor != nullptr ? p.value_factor[it.h] : 1.f;
    for (int64_t r = 0; r < rows; ++r) {
      float* row = splits > 1 ? part_out.data() + (w * max_rows + r) * p.dim_v : g.row_out.data();
      // the sink joins once, in the merge of the splits
      const float lse2 = finish_row(g, r, row, splits > 1 ? NEG_INF : p.sink2(it.h * p.group + r % p.group));
      if (value_factor != 1.f)
        for (int64_t c = 0; c < p.dim_v; ++c) row[c] *= value_factor;
      if (splits > 1)
        part_lse[w * max_rows + r] = lse2;
      else
        store_row(it.b, it.t0 + r / p.group, it.h * p.group + r % p.group, row, lse2);
    }
  });
  if (splits == 1) return;
  // exact merge of the splits of each (sequence, head, tile) through their lse
  at::parallel_for(0, static_cast<int64_t>(work.size() / splits), 1, [&](int64_t first, int64_t last) {
    std::vector<float> merged(p.dim_v);
    for (int64_t base = first; base < last; ++base) {
      const WorkItem& it = work[base * splits];
      const int64_t rows = (it.t1 - it.t0) * p.group;
      for (int64_t r = 0; r < rows; ++r) {
        float m = NEG_INF;
        for (int64_t sp = 0; sp < splits; ++sp) m = std::max(m, part_lse[(base * splits + sp) * max_rows + r]);
        std::fill(merged.begin(), merged.end(), 0.f);
        float total = 0.f;
        if (m != NEG_INF) {
          for (int64_t sp = 0; sp < splits; ++sp) {
            const float ls = part_lse[(base * splits + sp) * max_rows + r];
            if (ls == NEG_INF) continue;
            const float wgt = std::exp2(ls - m);
            total += wgt;
            const float* po = part_out.data() + ((base * splits + sp) * max_rows + r) * p.dim_v;
            for (int64_t c = 0; c < p.dim_v; ++c) merged[c] += wgt * po[c];
          }
        }
        const float keep = add_sink(m, total, p.sink2(it.h * p.group + r % p.group));
        const float inv = total > 0.f ? keep / total : 0.f;
        for (int64_t c = 0; c < p.dim_v; ++c) merged[c] *= inv;
        store_row(it.b, it.t0 + r / p.group, it.h * p.group + r % p.group, merged.data(),
                  total > 0.f ? m + std::log2(total) : NEG_INF);
      }
    }
  });
}

// Bytes of the last-level cache: Linux sysfs (sysconf's figure is wrong in some VMs),
// else sysconf, else 32 MiB.
int64_t last_level_cache_bytes() {
  static const int64_t bytes = [] {
    int64_t best_level = 0, best_bytes = 0;
    for (int index = 0; index < 8; ++index) {
      const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
      std::ifstream level_file(dir + "level"), size_file(dir + "size");
      int64_t level = 0, size = 0;
      char unit = 0;
      if (!(level_file >> level) || !(size_file >> size)) continue;
      size_file >> unit;
      size *= unit == 'K' ? 1024 : unit == 'M' ? 1024 * 1024 : 1;
      if (level >= best_level) best_level = level, best_bytes = size;
    }
    if (best_bytes > 0) return best_bytes;
    long l3 = -1;
#if defined(_SC_LEVEL3_CACHE_SIZE)
    l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
#endif
    return l3 > 0 ? static_cast<int64_t>(l3) : int64_t{32} << 20;
  }();
  return bytes;
}

// Software prefetch pays only when the keys and values read by this call do not fit in
// half the last-level cache (the cache also holds the rest of the step's working set: at a
// 32 MiB L3, 32 MiB of K/V ran 1.5x faster with it, 8 MiB 1.3x slower).
// ASCEND_EXT_NATIVE_STREAM_BYTES overrides the threshold (0: always; tests use it).
bool kv_outgrows_cache(const std::vector<int64_t>& k_len, int64_t hkv, int64_t dim, int64_t dim_v,
                       int64_t element_bytes) {
  int64_t keys = 0;
  for (int64_t n : k_len) keys += n;
  const char* env = std::getenv("ASCEND_EXT_NATIVE_STREAM_BYTES");
  const int64_t threshold = env != nullptr && *env != 0 ? std::atoll(env) : last_level_cache_bytes() / 2;
  return keys * hkv * (dim + dim_v) * element_bytes > threshold;
}

// Calls fn(T{}) with T the element type of a float32/bfloat16/float16 tensor.
template <typename Fn>
void dispatch_float_type(at::ScalarType type, const char* op, Fn fn) {
  switch (type) {
    case at::kFloat: return fn(float{});
    case at::kBFloat16: return fn(c10::BFloat16{});
    case at::kHalf: return fn(c10::Half{});
    default: TORCH_CHECK(false, op, ": unsupported dtype ", type, " (float32, bfloat16 or float16)");
  }
}

// Values of a small int32/int64 index tensor (read in place when int32 contiguous).
std::vector<int64_t> to_vec(const at::Tensor& t) {
  if (t.scalar_type() == at::kInt && t.is_contiguous()) {
    const int32_t* p = t.data_ptr<int32_t>();
    return std::vector<int64_t>(p, p + t.numel());
  }
  auto c = t.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// Structural checks of the raw op (the Python layer validates values and gives the
// friendlier messages; these keep direct torch.ops calls from reading out of bounds).
bool is_quantised(at::ScalarType type) { return type == at::kFloat8_e4m3fn || type == at::kChar; }

void check_tensors(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, int64_t kv_dims,
                   const at::Tensor& out, const std::optional<at::Tensor>& lse) {
  const bool quantised = is_quantised(k.scalar_type());
  for (const at::Tensor* t : {&q, &k, &v, &out}) {
    TORCH_CHECK(t->device().is_cpu(), "ascend_ext native attention: tensors must be on the CPU");
    const bool cache = t == &k || t == &v;
    const at::ScalarType want = quantised && cache ? k.scalar_type() : q.scalar_type();
    TORCH_CHECK(t->scalar_type() == want, "q and out must share one dtype, and the caches too (or both be ",
                "float8_e4m3fn / int8), got ", t->scalar_type(), " and ", want);
    TORCH_CHECK(t->stride(-1) == 1, "q, k, v and out need a contiguous last (head) dim");
  }
  TORCH_CHECK(q.dim() == 3 && out.dim() == 3, "q and out must be [T, H, D]");
  TORCH_CHECK(k.dim() == kv_dims && v.dim() == kv_dims, "k and v must have ", kv_dims, " dims");
  const int64_t hkv = k.size(kv_dims - 2);
  TORCH_CHECK(hkv > 0 && q.size(1) % hkv == 0, "query heads ", q.size(1), " must be a multiple of KV heads ", hkv);
  TORCH_CHECK(k.size(-1) == q.size(2), "k head dim ", k.size(-1), " != q head dim ", q.size(2));
  TORCH_CHECK(out.size(0) == q.size(0) && out.size(1) == q.size(1) && out.size(2) == v.size(-1),
              "out must be [T, Hq, Dv]");
  if (lse.has_value())
    TORCH_CHECK(lse->dim() == 2 && lse->size(0) == q.size(1) && lse->size(1) == q.size(0), "lse must be [Hq, T]");
}

Problem make_problem(const at::Tensor& q, int64_t hkv, int64_t dim_v, const at::Tensor& out, double scale,
                     int64_t left, int64_t right, double softcap) {
  Problem p;
  p.hq = q.size(1);
  p.hkv = hkv;
  p.group = p.hq / hkv;
  p.dim = q.size(2);
  p.dim_v = dim_v;
  p.q_stride_t = q.stride(0);
  p.q_stride_h = q.stride(1);
  p.o_stride_t = out.stride(0);
  p.o_stride_h = out.stride(1);
  p.scale = static_cast<float>(scale);
  p.softcap = static_cast<float>(softcap);
  p.window = {left, right};
  p.prefetch = false;
  return p;
}

const float* sinks_ptr(const std::optional<at::Tensor>& sinks, int64_t hq) {
  if (!sinks.has_value()) return nullptr;
  TORCH_CHECK(sinks->device().is_cpu() && sinks->scalar_type() == at::kFloat && sinks->is_contiguous() &&
                  sinks->numel() == hq,
              "sinks must be contiguous float32 [Hq] = [", hq, "] on the CPU");
  return sinks->data_ptr<float>();
}

float* lse_ptr(const std::optional<at::Tensor>& lse) {
  if (!lse.has_value()) return nullptr;
  TORCH_CHECK(lse->scalar_type() == at::kFloat && lse->is_contiguous(), "lse must be contiguous float32 [Hq, T]");
  return lse->data_ptr<float>();
}

// The paged side of a call: per-sequence query starts and counts, the int32 block table and
// the caches' strides; rows<C>(b, h) gives the (keys, values) row sources of sequence b, KV
// head h over caches stored as C.
struct PagedCall {
  std::vector<int64_t> q_start, q_len;
  at::Tensor table;  // int32 [B, W]: no copy for vLLM's table
  const void *k, *v;
  int64_t width, block, ks0, ks1, ks2, vs0, vs1, vs2;

  PagedCall(const std::vector<int64_t>& cu, const at::Tensor& block_table, const at::Tensor& k_cache,
            const at::Tensor& v_cache)
      : q_start(cu.begin(), cu.end() - 1), q_len(cu.size() - 1), table(block_table.to(at::kInt).contiguous()),
        k(k_cache.data_ptr()), v(v_cache.data_ptr()), width(table.size(1)), block(k_cache.size(1)),
        ks0(k_cache.stride(0)), ks1(k_cache.stride(1)), ks2(k_cache.stride(2)), vs0(v_cache.stride(0)),
        vs1(v_cache.stride(1)), vs2(v_cache.stride(2)) {
    for (size_t b = 0; b < q_len.size(); ++b) q_len[b] = cu[b + 1] - cu[b];
  }

  template <typename C>
  std::pair<PagedRows<C>, PagedRows<C>> rows(int64_t b, int64_t h) const {
    const int32_t* tab = table.data_ptr<int32_t>() + b * width;
    return {PagedRows<C>{static_cast<const C*>(k) + h * ks2, tab, block, ks0, ks1},
            PagedRows<C>{static_cast<const C*>(v) + h * vs2, tab, block, vs0, vs1}};
  }
};

// Per-channel float32 [Hkv, dim] dequantisation parameters (kv_quant's normalised form).
const float* channel_params(const std::optional<at::Tensor>& t, int64_t hkv, int64_t dim, const char* name) {
  if (!t.has_value()) return nullptr;
  TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->is_contiguous() && t->dim() == 2 &&
                  t->size(0) == hkv && t->size(1) == dim,
              name, " must be contiguous float32 [Hkv, D] = [", hkv, ", ", dim, "] on the CPU");
  return t->data_ptr<float>();
}

// Whether every head's row of a per-channel [hkv, dim] parameter holds one value (per tensor
// or per KV head), and with `integral` a small integer (|x| <= 128: stored - x stays exact
// in bfloat16 for int8 caches).
bool constant_per_head(const float* t, int64_t hkv, int64_t dim, bool integral) {
  for (int64_t h = 0; h < hkv; ++h) {
    const float x = t[h * dim];
    if (integral && (x != std::nearbyint(x) || std::fabs(x) > 128.f)) return false;
    for (int64_t c = 1; c < dim; ++c)
      if (t[h * dim + c] != x) return false;
  }
  return true;
}

// Whether a folded fp8 call (bfloat16 queries) reads its e4m3 rows unstaged, widened in the
// bfloat16 kernels' registers: a build with those kernels, head dims they take, and work items
// too small for the tile kernel (which reads staged bfloat16 rows), i.e. decode and short
// chunks. The staging pass it saves wrote and re-read every row (benchmarks/NOTES.md).
bool widens_fp8_on_load(int64_t dim, int64_t dim_v, double softcap, const std::vector<int64_t>& q_len,
                        int64_t group) {
#if defined(__AVX512BF16__)
  if (key_path<c10::BFloat16>(dim) != RowPath::DotBF16 || value_path<c10::BFloat16>(dim_v) != RowPath::PairsBF16)
    return false;
  const int64_t longest = q_len.empty() ? 0 : *std::max_element(q_len.begin(), q_len.end());
  // (the AVX-512 threshold: fp8 rows are widened in the row kernels' registers on AMX hosts too)
  return !tiles::takes<c10::BFloat16>(dim, dim_v, static_cast<float>(softcap), longest * group, false);
#else
  (void)dim, (void)dim_v, (void)softcap, (void)q_len, (void)group;
  return false;
#endif
}

// A float8_e4m3fn or int8 cache (kv_dequant.h). bfloat16 queries with scales constant per KV
// head (fp8 always; int8 unless per channel) and integral offsets: the stored values minus
// offset become bfloat16 rows (exact) for the bfloat16 kernels, the key scale multiplies the
// scores and the value scale the outputs. Otherwise float32 rows, queries and outputs in
// float32 around the float32 kernels. Past the cache threshold each block prefetches the next
// block's stored rows in one burst.
void paged_attention_quantised(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                               const PagedCall& call, const std::vector<int64_t>& lens, double scale, int64_t window_left,
                               int64_t window_right, double softcap, at::Tensor& out,
                               const std::optional<at::Tensor>& lse, const std::optional<at::Tensor>& sinks,
                               const std::optional<at::Tensor>& k_scale, const std::optional<at::Tensor>& v_scale,
                               const std::optional<at::Tensor>& k_offset, const std::optional<at::Tensor>& v_offset) {
  const int64_t hkv = k_cache.size(2), dim = k_cache.size(3), dim_v = v_cache.size(3);
  TORCH_CHECK(k_scale.has_value() && v_scale.has_value(), "a quantised cache needs k_scale and v_scale");
  TORCH_CHECK(k_offset.has_value() == v_offset.has_value(), "give both k_offset and v_offset, or neither");
  TORCH_CHECK(k_cache.scalar_type() == at::kChar || !k_offset.has_value(), "float8_e4m3fn caches take no offsets");
  const float* ks = channel_params(k_scale, hkv, dim, "k_scale");
  const float* vs = channel_params(v_scale, hkv, dim_v, "v_scale");
  const float* ko = channel_params(k_offset, hkv, dim, "k_offset");
  const float* vo = channel_params(v_offset, hkv, dim_v, "v_offset");
  const bool fold = q.scalar_type() == at::kBFloat16 && constant_per_head(ks, hkv, dim, false) &&
                    constant_per_head(vs, hkv, dim_v, false) &&
                    (ko == nullptr || (constant_per_head(ko, hkv, dim, true) && constant_per_head(vo, hkv, dim_v, true)));
  std::vector<float> key_factor(hkv), value_factor(hkv);
  for (int64_t h = 0; h < hkv; ++h) key_factor[h] = ks[h * dim], value_factor[h] = vs[h * dim_v];
  const at::Tensor qx = fold ? q : q.to(at::kFloat).contiguous();
  at::Tensor outx = fold ? out : at::empty(out.sizes(), qx.options());
  Problem p = make_problem(qx, hkv, dim_v, outx, scale, window_left, window_right, softcap);
  p.sinks = sinks_ptr(sinks, p.hq);
  if (fold) p.key_factor = key_factor.data(), p.value_factor = value_factor.data();
  p.prefetch = kv_outgrows_cache(lens, hkv, dim, dim_v, k_cache.element_size());
  auto with_types = [&](auto storage, auto staged) {
    using C = decltype(storage);
    using O = decltype(staged);
    using Rows = kv_dequant::DequantRows<C, PagedRows<C>, O>;
    const float* k_rows_scale = fold ? nullptr : ks;   // folded: applied to the scores / outputs
    const float* v_rows_scale = fold ? nullptr : vs;
    auto rows_of = [&](int64_t b, int64_t h) {
      thread_local std::vector<O> k_staging, v_staging;   // one block of rows per thread
      const int64_t staged_rows = std::max(MAX_BLOCK_KEYS, tiles::MAX_FILL_KEYS);   // one fill() of either kernel
      k_staging.resize(staged_rows * dim);
      v_staging.resize(staged_rows * dim_v);
      const auto [keys, values] = call.rows<C>(b, h);
      return std::pair{Rows{keys, k_rows_scale != nullptr ? k_rows_scale + h * dim : nullptr,
                            ko != nullptr ? ko + h * dim : nullptr, dim, k_staging.data()},
                       Rows{values, v_rows_scale != nullptr ? v_rows_scale + h * dim_v : nullptr,
                            vo != nullptr ? vo + h * dim_v : nullptr, dim_v, v_staging.data()}};
    };
    run<O>(p, qx.data_ptr<O>(), outx.data_ptr<O>(), lse_ptr(lse), q.size(0), call.q_start, call.q_len, lens,
           rows_of);
  };
  const bool fp8 = k_cache.scalar_type() == at::kFloat8_e4m3fn;
  if (fold && fp8 && widens_fp8_on_load(dim, dim_v, softcap, call.q_len, p.group)) {
    // decode-sized items: e4m3 rows straight into the bfloat16 kernels (no staging pass)
    auto rows_of = [&](int64_t b, int64_t h) { return call.rows<kv_dequant::E4M3>(b, h); };
    run<c10::BFloat16>(p, qx.data_ptr<c10::BFloat16>(), outx.data_ptr<c10::BFloat16>(), lse_ptr(lse), q.size(0),
                       call.q_start, call.q_len, lens, rows_of);
    return;
  }
  if (fold && fp8) with_types(kv_dequant::E4M3{}, c10::BFloat16{});
  if (fold && !fp8) with_types(int8_t{}, c10::BFloat16{});
  if (!fold && fp8) with_types(kv_dequant::E4M3{}, float{});
  if (!fold && !fp8) with_types(int8_t{}, float{});
  if (!fold) out.copy_(outx);
}

// Whether this build reads a bfloat16 value cache in kv_layout "pairs" (rows::value_pairs)
// of head dim dim_v: the AVX512-BF16 pair kernels.
bool value_pairs_supported(int64_t dim_v) {
  return value_path<c10::BFloat16>(dim_v) == RowPath::PairsBF16;
}

// Whether a bfloat16 cache in kv_layout "tiles" of head dims (dim, dim_v) is read in place by
// the AMX tiled kernel now (built, granted, not switched off); other calls read staged rows.
bool kv_tiles_in_place(int64_t dim, int64_t dim_v) {
  return amx_tiled_takes(dim, dim_v, 0.f, tiles::uses_amx<c10::BFloat16>());
}

void paged_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                     const at::Tensor& block_table, const at::Tensor& seq_lens, const at::Tensor& cu_seqlens_q,
                     double scale, int64_t window_left, int64_t window_right, double softcap, at::Tensor& out,
                     const std::optional<at::Tensor>& lse, const std::optional<at::Tensor>& sinks,
                     const std::optional<at::Tensor>& k_scale, const std::optional<at::Tensor>& v_scale,
                     const std::optional<at::Tensor>& k_offset, const std::optional<at::Tensor>& v_offset,
                     bool value_pairs, bool kv_tiles) {
  check_tensors(q, k_cache, v_cache, 4, out, lse);
  if (kv_tiles) {
    TORCH_CHECK(!value_pairs, "kv_tiles (kv_layout 'tiles') and value_pairs (kv_layout 'pairs') exclude each other");
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, "kv_tiles: bfloat16 queries and caches only");
    kv_tiles::check_caches(k_cache, v_cache);
  }
  if (value_pairs) {
    TORCH_CHECK(v_cache.scalar_type() == at::kBFloat16, "value_pairs: bfloat16 caches only, got ",
                v_cache.scalar_type());
    TORCH_CHECK(value_pairs_supported(v_cache.size(3)), "value_pairs: this build has no AVX512-BF16 pair kernels ",
                "for value head dim ", v_cache.size(3), " (needs a multiple of 32)");
    TORCH_CHECK(v_cache.size(1) % 2 == 0, "value_pairs: v_cache needs an even block size, got ", v_cache.size(1));
  }
  TORCH_CHECK(block_table.dim() == 2 && block_table.size(0) == seq_lens.numel() &&
                  cu_seqlens_q.numel() == seq_lens.numel() + 1,
              "block_table [B, W], seq_lens [B] and cu_seqlens_q [B + 1] disagree on B");
  const auto cu = to_vec(cu_seqlens_q);
  const auto lens = to_vec(seq_lens);
  const PagedCall call(cu, block_table, k_cache, v_cache);
  if (is_quantised(k_cache.scalar_type()))
    return paged_attention_quantised(q, k_cache, v_cache, call, lens, scale, window_left, window_right, softcap,
                                     out, lse, sinks, k_scale, v_scale, k_offset, v_offset);
  TORCH_CHECK(!k_scale.has_value() && !v_scale.has_value() && !k_offset.has_value() && !v_offset.has_value(),
              "k_scale / v_scale / k_offset / v_offset apply to float8_e4m3fn / int8 caches only");
  Problem p = make_problem(q, k_cache.size(2), v_cache.size(3), out, scale, window_left, window_right, softcap);
  p.sinks = sinks_ptr(sinks, p.hq);
  p.prefetch = kv_outgrows_cache(lens, p.hkv, p.dim, p.dim_v, q.element_size());
  p.value_pairs = value_pairs;
  if (kv_tiles) {   // in place on AMX (amx_tiled), else staged rows for the other kernels
    p.kv_tiles = true;
    using Rows = kv_tiles::StagedRows<PagedRows<c10::BFloat16>>;
    auto rows_of = [&](int64_t b, int64_t h) {
      thread_local std::vector<c10::BFloat16> k_staging, v_staging;   // one fill() of any kernel
      const int64_t staged_rows = std::max(MAX_BLOCK_KEYS, tiles::MAX_FILL_KEYS);
      k_staging.resize(staged_rows * p.dim);
      v_staging.resize(staged_rows * p.dim_v);
      const auto [keys, values] = call.rows<c10::BFloat16>(b, h);
      return std::pair{Rows{keys, p.dim, p.dim_v, true, k_staging.data()},
                       Rows{values, p.dim, p.dim_v, false, v_staging.data()}};
    };
    run<c10::BFloat16>(p, q.data_ptr<c10::BFloat16>(), out.data_ptr<c10::BFloat16>(), lse_ptr(lse), q.size(0),
                       call.q_start, call.q_len, lens, rows_of);
    return;
  }
  dispatch_float_type(q.scalar_type(), "ascend_ext::paged_attention", [&](auto tag) {
    using scalar_t = decltype(tag);
    auto rows_of = [&](int64_t b, int64_t h) { return call.rows<scalar_t>(b, h); };
    run<scalar_t>(p, q.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse_ptr(lse), q.size(0), call.q_start,
                  call.q_len, lens, rows_of);
  });
}

void flash_attn_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
                       const at::Tensor& cu_seqlens_k, double scale, int64_t window_left, int64_t window_right,
                       double softcap, at::Tensor& out, const std::optional<at::Tensor>& lse,
                       const std::optional<at::Tensor>& sinks) {
  check_tensors(q, k, v, 3, out, lse);
  TORCH_CHECK(!is_quantised(k.scalar_type()), "flash_attn_varlen: packed K / V must be in the query dtype, got ",
              k.scalar_type());
  TORCH_CHECK(cu_seqlens_q.numel() == cu_seqlens_k.numel() && cu_seqlens_q.numel() >= 1,
              "cu_seqlens_q and cu_seqlens_k must both be [B + 1]");
  Problem p = make_problem(q, k.size(1), v.size(2), out, scale, window_left, window_right, softcap);
  p.sinks = sinks_ptr(sinks, p.hq);
  const auto cq = to_vec(cu_seqlens_q);
  const auto ck = to_vec(cu_seqlens_k);
  std::vector<int64_t> q_start(cq.begin(), cq.end() - 1), q_len(cq.size() - 1), k_len(ck.size() - 1);
  for (size_t b = 0; b + 1 < cq.size(); ++b) {
    q_len[b] = cq[b + 1] - cq[b];
    k_len[b] = ck[b + 1] - ck[b];
  }
  p.prefetch = kv_outgrows_cache(k_len, p.hkv, p.dim, p.dim_v, q.element_size());
  const int64_t kst = k.stride(0), ksh = k.stride(1), vst = v.stride(0), vsh = v.stride(1);
  dispatch_float_type(q.scalar_type(), "ascend_ext::flash_attn_varlen", [&](auto tag) {
    using scalar_t = decltype(tag);
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    auto rows_of = [&](int64_t b, int64_t h) {
      return std::pair{PackedRows<scalar_t>{kp + ck[b] * kst + h * ksh, kst},
                       PackedRows<scalar_t>{vp + ck[b] * vst + h * vsh, vst}};
    };
    run<scalar_t>(p, q.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse_ptr(lse), q.size(0), q_start, q_len, k_len,
                  rows_of);
  });
}

}  // namespace
}  // namespace ascend_ext

ASCEND_EXT_LIBRARY(ASCEND_EXT_OPS_NAMESPACE, m) {
  // whether the bfloat16 tile kernel runs on AMX now (built, granted, ASCEND_EXT_NATIVE_AMX not 0)
  m.def("amx_usable() -> bool", [] { return ascend_ext::amx::usable(); });
  // whether paged_attention reads a bfloat16 value cache stored as key pairs (value_pairs=True)
  m.def("value_pairs_supported(int dim_v) -> bool", &ascend_ext::value_pairs_supported);
  // whether paged_attention reads a "tiles" cache (kv_tiles=True) in place, on AMX, now
  m.def("kv_tiles_in_place(int dim, int dim_v) -> bool", &ascend_ext::kv_tiles_in_place);
  m.def("paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor seq_lens, "
        "Tensor cu_seqlens_q, float scale, int window_left, int window_right, float softcap, Tensor(a!) out, "
        "Tensor(b!)? lse, Tensor? sinks=None, Tensor? k_scale=None, Tensor? v_scale=None, Tensor? k_offset=None, "
        "Tensor? v_offset=None, bool value_pairs=False, bool kv_tiles=False) -> ()");
  m.def("flash_attn_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, float scale, "
        "int window_left, int window_right, float softcap, Tensor(a!) out, Tensor(b!)? lse, Tensor? sinks=None) -> ()");
}

ASCEND_EXT_LIBRARY_IMPL(ASCEND_EXT_OPS_NAMESPACE, CPU, m) {
  m.impl("paged_attention", &ascend_ext::paged_attention);
  m.impl("flash_attn_varlen", &ascend_ext::flash_attn_varlen);
}
