// Native CPU MLA decode of ascend_ext: torch.ops.ascend_ext_native.mla_decode.
//
// Absorbed multi-head latent attention is multi-query attention with one latent KV head:
// every cached row (kv_lora_rank latent + rope, the key) is shared by all Hq heads and
// s_q queries of its sequence, and its first kv_lora_rank channels are the value. So a
// work item takes up to 64 query rows (s_q x Hq, query-major) of one sequence over one
// range of keys and streams the keys through in chunks of 32: each latent row is read
// from the cache once per item and used by every row (q.k on 4 rows x 4 keys register
// tiles, p.V on 4 rows x 64 channels: the attention core's row kernels, attention_rows.h),
// with an online softmax in float32 (base 2).
//
// Arithmetic: q.k of bfloat16 inputs runs on AVX512-BF16 dot products in place (the
// products of two bfloat16 are exact in float32, accumulation is float32); other dtypes
// and builds without AVX512-BF16 widen each key chunk to float32 once per item (float32
// caches are read in place). Values are widened to float32 once per chunk and p.V is a
// float32 FMA (p is not rounded to bfloat16). Work items (sequence, row tile, key split)
// are taken longest first by every intra-op thread; when there are too few items for
// the threads, contexts are split (even at batch 1) and the splits merged exactly
// through their log-sum-exp.
//
// Conventions (ascend_ext.ops.mla_decode): q [B, s_q, Hq, W] (W = kv_lora_rank + rope,
// any strides, contiguous last dim), cache [num_blocks, block_size, W] (contiguous last
// dim), block_table int32 [B, max_blocks], seq_lens int32 [B] (keys including the s_q
// new ones), causal bottom-right: query i of a sequence with L keys sees keys j <= i + L -
// s_q. out [B, s_q, Hq, kv_lora_rank] (dtype of q), lse float32 [Hq, B * s_q] (natural
// log; rows that see no key give 0 and lse -inf).
//
// FP8 latent cache (float8_e4m3fn, per-tensor kv_scale, float16/bfloat16 queries): each
// chunk's stored rows are widened exactly into the query dtype (every e4m3 value is a
// bfloat16 and a float16 number; kv_dequant.h) and run through the same kernels; kv_scale
// multiplies the scores' scale and the outputs, so the lse is that of the dequantised cache.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <initializer_list>
#include <limits>
#include <numeric>
#include <optional>
#include <type_traits>
#include <vector>

#include "ops_namespace.h"
#include "attention_rows.h"
#include "kv_dequant.h"
#include "vec.h"

namespace ascend_ext {
namespace {

using vec::f16x;
using vec::kLanes;

constexpr int64_t KEYS = 32;        // keys per chunk (two vectors of scores per row)
constexpr int64_t ROWS = 64;        // query rows per work item
constexpr int64_t MIN_SPLIT = 128;  // fewest keys a context split is given
constexpr float LOG2E = 1.44269504088896340736f;
constexpr float LN2 = 0.69314718055994530942f;
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t ceil_div(int64_t x, int64_t m) { return (x + m - 1) / m; }

struct Problem {
  int64_t s_q, hq, width, rank, block_size;
  int64_t q_b, q_i, q_h, o_b, o_i, o_h;  // element strides of q and out
  int64_t c_block, c_token;              // element strides of the cache
  int64_t table_stride;
  int64_t tokens;  // B * s_q (lse row length)
  float scale2;    // softmax scale * log2(e): scores in base-2 units
  bool causal;
  float value_scale;  // the outputs' factor: kv_scale of an FP8 cache, else 1
  bool dot_bf16;   // q.k on AVX512-BF16 dot products, keys read in place
  bool keys_in_place, values_in_place;  // float32 rows read from the cache as they are
  int64_t wp, rp;  // width and rank padded to whole vectors (widened rows)
};

struct Item {
  int64_t b, r0, r1, k0, k1;
  int64_t part;  // slot in the split buffers, -1 when the item covers its whole context
};

// ------------------------------------------------------------------ four rows at a time
// The row kernels of the attention core (attention_rows.h): four-row register tiles where
// the build has AVX-512, one row at a time in the portable build.

// s[t * KEYS + j] = scale2 * (q[r + t] . k[j]) for t < 4, j < n.
template <typename T>
inline void scores_of_four(const Problem& p, const T* const* q_raw, const float* const* q, const T* const* k_raw,
                           const float* const* k, int64_t n, float* s) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (p.dot_bf16) {
      rows::scores4_bf16(reinterpret_cast<const uint16_t* const*>(q_raw), k_raw, p.width, n, p.scale2, s, KEYS);
      return;
    }
  }
#endif
#if defined(__AVX512F__)
  rows::scores4(q, k, p.wp, n, p.scale2, s, KEYS);
#else
  for (int t = 0; t < 4; ++t) rows::scores(q[t], k, p.wp, n, p.scale2, s + t * KEYS);
#endif
}

// acc[t][0:rp] += sum_{j<n} p[t * KEYS + j] * v[j][0:rp] for t < 4.
inline void values_of_four(float* const* acc, const float* probs, const float* const* v, int64_t rp, int64_t n) {
#if defined(__AVX512F__)
  const float* rows_p[4] = {probs, probs + KEYS, probs + 2 * KEYS, probs + 3 * KEYS};
  rows::accumulate4(acc, rows_p, v, rp, n);
#else
  for (int t = 0; t < 4; ++t) rows::accumulate(acc[t], probs + t * KEYS, v, rp, n);
#endif
}

// ------------------------------------------------------------------ online softmax
// Row state over one chunk: s holds the scaled (base-2) q.k of KEYS keys, of which the
// first `visible` count. s becomes the probabilities (0 past `visible`), m/l are updated
// and the accumulator row is rescaled.
inline void softmax_step(float* s, int64_t visible, float& m, float& l, float* acc, int64_t rp) {
  static_assert(KEYS == 2 * kLanes, "two score vectors per row");
  if (visible <= 0) {
    std::fill(s, s + KEYS, 0.f);
    return;
  }
  f16x iota;
  for (int i = 0; i < kLanes; ++i) iota[i] = static_cast<float>(i);
  const f16x lim = vec::splat(static_cast<float>(visible));
  f16x x0 = vec::load(s), x1 = vec::load(s + kLanes);
  x0 = iota < lim ? x0 : vec::splat(NEG_INF);
  x1 = iota + static_cast<float>(kLanes) < lim ? x1 : vec::splat(NEG_INF);
  const float m_new = std::max(m, std::max(vec::hmax(x0), vec::hmax(x1)));
  const f16x p0 = vec::exp2(x0 - m_new), p1 = vec::exp2(x1 - m_new);
  vec::store(s, p0);
  vec::store(s + kLanes, p1);
  if (m_new != m) {
    const float alpha = std::exp2(m - m_new);  // 0 when m was -inf
    const f16x av = vec::splat(alpha);
    for (int64_t c = 0; c < rp; c += kLanes) vec::store(acc + c, vec::load(acc + c) * av);
    l *= alpha;
    m = m_new;
  }
  l += vec::hsum(p0 + p1);
}

// ------------------------------------------------------------------ one work item
template <typename T>
struct Scratch {
  std::vector<float> q, k, v, s, acc;
  std::vector<T> stored;  // one chunk of an FP8 cache's rows widened to T
  float m[ROWS], l[ROWS];
  int64_t hi[ROWS];  // keys [0, hi) visible to the row
  const T* q_rows[ROWS];
  const T* k_raw[KEYS];
  const float* k_rows[KEYS];
  const float* v_rows[KEYS];
  float* acc_rows[ROWS];
  const float* qf_rows[ROWS];
};

// Cache row of key `key` as T: in place, or (an e4m3 cache) widened into chunk slot j of g.stored.
template <typename T, typename C>
inline const T* cache_row(const Problem& p, const C* cache, const int32_t* table, int64_t key, int64_t j,
                          Scratch<T>& g) {
  const C* row = cache + table[key / p.block_size] * p.c_block + (key % p.block_size) * p.c_token;
  if constexpr (std::is_same_v<C, T>) {
    return row;
  } else {
    T* dst = g.stored.data() + j * p.width;
    kv_dequant::dequantize_row(row, nullptr, nullptr, p.width, dst);
    return dst;
  }
}

// Rows [0, count) (padded to whole tiles of 4) of item `it` over its keys; leaves the
// unnormalised accumulators and the m/l statistics in g. C: the cache's storage type (T, or
// kv_dequant::E4M3).
template <typename T, typename C>
void attend_item(const Problem& p, const Item& it, int64_t seq_len, const T* q, const C* cache, const int32_t* table,
                 Scratch<T>& g) {
  const int64_t count = it.r1 - it.r0, padded = round_up(count, 4);
  g.acc.assign(padded * p.rp, 0.f);
  if (!p.dot_bf16) g.q.resize(padded * p.wp);
  if (!p.keys_in_place && !p.dot_bf16) g.k.resize(KEYS * p.wp);
  if (!p.values_in_place) g.v.resize(KEYS * p.rp);
  if constexpr (!std::is_same_v<C, T>) g.stored.resize(KEYS * p.width);
  g.s.resize(padded * KEYS);
  for (int64_t r = 0; r < padded; ++r) {
    const int64_t row = it.r0 + std::min(r, count - 1);  // pad rows repeat the last one
    const int64_t i = row / p.hq, h = row % p.hq;
    g.q_rows[r] = q + it.b * p.q_b + i * p.q_i + h * p.q_h;
    g.hi[r] = p.causal ? std::min(seq_len, std::max<int64_t>(0, seq_len - p.s_q + i + 1)) : seq_len;
    g.m[r] = NEG_INF;
    g.l[r] = 0.f;
    g.acc_rows[r] = g.acc.data() + r * p.rp;
    if (!p.dot_bf16) {
      float* dst = g.q.data() + r * p.wp;
      rows::widen(g.q_rows[r], dst, p.width, p.wp);
      g.qf_rows[r] = dst;
    }
  }
  for (int64_t c0 = it.k0; c0 < it.k1; c0 += KEYS) {
    const int64_t n = std::min(KEYS, it.k1 - c0);
    for (int64_t j = 0; j < n; ++j) {
      const T* row = cache_row(p, cache, table, c0 + j, j, g);
      g.k_raw[j] = row;
      if (p.keys_in_place) {
        g.k_rows[j] = reinterpret_cast<const float*>(row);
      } else if (!p.dot_bf16) {
        rows::widen(row, g.k.data() + j * p.wp, p.width, p.wp);
        g.k_rows[j] = g.k.data() + j * p.wp;
      }
      if (p.values_in_place) {
        g.v_rows[j] = reinterpret_cast<const float*>(row);
      } else {
        rows::widen(row, g.v.data() + j * p.rp, p.rank, p.rp);
        g.v_rows[j] = g.v.data() + j * p.rp;
      }
    }
    for (int64_t r = 0; r < padded; r += 4) {
      float* s = g.s.data() + r * KEYS;
      scores_of_four(p, g.q_rows + r, g.qf_rows + r, g.k_raw, g.k_rows, n, s);
      bool any = false;
      for (int64_t t = r; t < r + 4; ++t) {
        const int64_t visible = std::min(n, g.hi[t] - c0);
        softmax_step(g.s.data() + t * KEYS, visible, g.m[t], g.l[t], g.acc_rows[t], p.rp);
        any = any || visible > 0;
      }
      if (any) values_of_four(g.acc_rows + r, s, g.v_rows, p.rp, n);
    }
  }
}

template <typename T>
void store_row(T* dst, const float* src, float scale, int64_t n) {
  int64_t c = 0;
  for (; c + kLanes <= n; c += kLanes) vec::store_as(dst + c, vec::load(src + c) * scale);
  for (; c < n; ++c) dst[c] = static_cast<T>(src[c] * scale);
}

// Base-2 lse of a row's statistics (-inf when it saw no key).
inline float lse2_of(float m, float l) { return l > 0.f ? m + std::log2(l) : NEG_INF; }

// ------------------------------------------------------------------ planning
// Items (sequence, row tile, key split), the splits of a (sequence, row tile) adjacent;
// `order` lists them longest first. Contexts split only when the unsplit items are
// fewer than twice the threads.
std::vector<Item> plan(const std::vector<int64_t>& lens, int64_t row_count, std::vector<int64_t>& order,
                       int64_t& parts) {
  const int64_t threads = at::get_num_threads();
  const int64_t tiles = ceil_div(row_count, ROWS);
  const int64_t unsplit = static_cast<int64_t>(lens.size()) * tiles;
  std::vector<Item> items;
  parts = 0;
  for (size_t b = 0; b < lens.size(); ++b) {
    const int64_t len = lens[b];
    int64_t splits = 1;
    if (unsplit < 2 * threads) splits = std::max<int64_t>(1, std::min(ceil_div(2 * threads, unsplit), len / MIN_SPLIT));
    const int64_t span = round_up(ceil_div(std::max<int64_t>(len, 1), splits), KEYS);
    splits = ceil_div(std::max<int64_t>(len, 1), span);
    for (int64_t r0 = 0; r0 < row_count; r0 += ROWS)
      for (int64_t sp = 0; sp < splits; ++sp) {
        const int64_t k0 = std::min(len, sp * span), k1 = std::min(len, k0 + span);
        items.push_back({static_cast<int64_t>(b), r0, std::min(row_count, r0 + ROWS), k0, k1, splits > 1 ? parts++ : -1});
      }
  }
  order.resize(items.size());
  std::iota(order.begin(), order.end(), 0);
  auto cost = [&](int64_t i) { return (items[i].k1 - items[i].k0 + 1) * (items[i].r1 - items[i].r0); };
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return cost(a) > cost(b); });
  return items;
}

template <typename T, typename C>
void run(const Problem& p, const T* q, const C* cache, const int32_t* table, const std::vector<int64_t>& lens, T* out,
         float* lse) {
  const int64_t row_count = p.s_q * p.hq;
  std::vector<int64_t> order;
  int64_t parts = 0;
  const std::vector<Item> items = plan(lens, row_count, order, parts);
  std::vector<float> part_out(parts * ROWS * p.rank), part_lse(parts * ROWS);

  auto write = [&](int64_t b, int64_t row, const float* acc, float inv_l, float lse2) {
    const int64_t i = row / p.hq, h = row % p.hq;
    store_row(out + b * p.o_b + i * p.o_i + h * p.o_h, acc, inv_l * p.value_scale, p.rank);
    if (lse) lse[h * p.tokens + b * p.s_q + i] = lse2 == NEG_INF ? NEG_INF : lse2 * LN2;
  };

  std::atomic<int64_t> next{0};
  const int64_t count = static_cast<int64_t>(items.size());
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), count), 1, [&](int64_t first, int64_t last) {
    Scratch<T> g;
    for (int64_t worker = first; worker < last; ++worker)
      for (int64_t n = next++; n < count; n = next++) {
        const Item& it = items[order[n]];
        const int32_t* row_table = table + it.b * p.table_stride;
        attend_item(p, it, lens[it.b], q, cache, row_table, g);
        for (int64_t r = 0; r < it.r1 - it.r0; ++r) {
          const float l = g.l[r], inv = l > 0.f ? 1.f / l : 0.f;
          if (it.part < 0) {
            write(it.b, it.r0 + r, g.acc_rows[r], inv, lse2_of(g.m[r], l));
          } else {
            float* dst = part_out.data() + (it.part * ROWS + r) * p.rank;
            for (int64_t c = 0; c < p.rank; ++c) dst[c] = g.acc_rows[r][c] * inv;
            part_lse[it.part * ROWS + r] = lse2_of(g.m[r], l);
          }
        }
      }
  });
  if (parts == 0) return;
  // merge the splits of each (sequence, row tile): consecutive items with part >= 0
  std::vector<int64_t> heads;
  for (int64_t n = 0; n < count; ++n)
    if (items[n].part >= 0 && (n == 0 || items[n - 1].part < 0 || items[n - 1].b != items[n].b ||
                                items[n - 1].r0 != items[n].r0))
      heads.push_back(n);
  at::parallel_for(0, static_cast<int64_t>(heads.size()), 1, [&](int64_t first, int64_t last) {
    std::vector<float> merged(p.rank);
    for (int64_t hidx = first; hidx < last; ++hidx) {
      const int64_t n0 = heads[hidx];
      int64_t n1 = n0;
      while (n1 < count && items[n1].part >= 0 && items[n1].b == items[n0].b && items[n1].r0 == items[n0].r0) ++n1;
      const Item& it = items[n0];
      for (int64_t r = 0; r < it.r1 - it.r0; ++r) {
        float top = NEG_INF;
        for (int64_t n = n0; n < n1; ++n) top = std::max(top, part_lse[items[n].part * ROWS + r]);
        std::fill(merged.begin(), merged.end(), 0.f);
        float total = 0.f;
        if (top != NEG_INF) {
          for (int64_t n = n0; n < n1; ++n) {
            const float w = std::exp2(part_lse[items[n].part * ROWS + r] - top);
            if (w == 0.f) continue;
            total += w;
            const float* src = part_out.data() + (items[n].part * ROWS + r) * p.rank;
            for (int64_t c = 0; c < p.rank; ++c) merged[c] += w * src[c];
          }
        }
        write(it.b, it.r0 + r, merged.data(), total > 0.f ? 1.f / total : 0.f,
              total > 0.f ? top + std::log2(total) : NEG_INF);
      }
    }
  });
}

void mla_decode(const at::Tensor& q, const at::Tensor& kv_cache, const at::Tensor& block_table,
                const at::Tensor& seq_lens, int64_t kv_lora_rank, double softmax_scale, bool causal, at::Tensor& out,
                const std::optional<at::Tensor>& lse, double kv_scale) {
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&q, &kv_cache, &block_table, &seq_lens, &out})
    TORCH_CHECK(t->device().is_cpu(), "ascend_ext native mla_decode: tensors must be on the CPU");
  TORCH_CHECK(q.dim() == 4 && kv_cache.dim() == 3 && out.dim() == 4,
              "q [B, s_q, Hq, W], kv_cache [num_blocks, block_size, W] and out [B, s_q, Hq, rank] expected");
  TORCH_CHECK(q.stride(3) == 1 && kv_cache.stride(2) == 1 && out.stride(3) == 1,
              "q, kv_cache and out need a contiguous last dim");
  const bool fp8 = kv_cache.scalar_type() == at::kFloat8_e4m3fn;
  TORCH_CHECK((fp8 || kv_cache.scalar_type() == q.scalar_type()) && out.scalar_type() == q.scalar_type(),
              "q, kv_cache and out must share a dtype (or kv_cache be float8_e4m3fn)");
  TORCH_CHECK(!fp8 || q.scalar_type() == at::kBFloat16 || q.scalar_type() == at::kHalf,
              "a float8_e4m3fn kv_cache takes float16 or bfloat16 queries");
  TORCH_CHECK(kv_scale > 0 && (fp8 || kv_scale == 1.0), "kv_scale must be > 0, and 1 unless the cache is float8_e4m3fn");
  const int64_t batch = q.size(0), s_q = q.size(1), hq = q.size(2), width = q.size(3);
  TORCH_CHECK(kv_cache.size(2) == width && kv_lora_rank > 0 && kv_lora_rank <= width,
              "cache width must equal q's and kv_lora_rank must lie in [1, width]");
  TORCH_CHECK(out.size(0) == batch && out.size(1) == s_q && out.size(2) == hq && out.size(3) == kv_lora_rank,
              "out must be [B, s_q, Hq, kv_lora_rank]");
  TORCH_CHECK(block_table.scalar_type() == at::kInt && block_table.dim() == 2 && block_table.size(0) == batch &&
                  block_table.stride(1) == 1,
              "block_table must be int32 [B, max_blocks] with a contiguous last dim");
  TORCH_CHECK(seq_lens.scalar_type() == at::kInt && seq_lens.dim() == 1 && seq_lens.size(0) == batch,
              "seq_lens must be int32 [B]");
  if (lse.has_value())
    TORCH_CHECK(lse->scalar_type() == at::kFloat && lse->is_contiguous() && lse->dim() == 2 &&
                    lse->size(0) == hq && lse->size(1) == batch * s_q,
                "lse must be a contiguous float32 [Hq, B * s_q]");
  const int64_t num_blocks = kv_cache.size(0), block_size = kv_cache.size(1);
  const at::Tensor lens_c = seq_lens.contiguous();
  const int32_t* lens_p = lens_c.data_ptr<int32_t>();
  const int32_t* table = block_table.data_ptr<int32_t>();
  std::vector<int64_t> lens(batch);
  for (int64_t b = 0; b < batch; ++b) {  // validate here: the threads below must not throw
    lens[b] = lens_p[b];
    TORCH_CHECK(lens[b] >= 0, "seq_lens[", b, "] = ", lens[b], " is negative");
    const int64_t blocks = ceil_div(lens[b], block_size);
    TORCH_CHECK(blocks <= block_table.size(1), "seq_lens[", b, "] = ", lens[b], " needs ", blocks,
                " blocks but block_table has ", block_table.size(1), " columns");
    for (int64_t j = 0; j < blocks; ++j) {
      const int64_t id = table[b * block_table.stride(0) + j];
      TORCH_CHECK(id >= 0 && id < num_blocks, "block_table[", b, ", ", j, "] = ", id, " is outside [0, ",
                  num_blocks, ")");
    }
  }
  Problem p{};
  p.s_q = s_q;
  p.hq = hq;
  p.width = width;
  p.rank = kv_lora_rank;
  p.block_size = block_size;
  p.q_b = q.stride(0), p.q_i = q.stride(1), p.q_h = q.stride(2);
  p.o_b = out.stride(0), p.o_i = out.stride(1), p.o_h = out.stride(2);
  p.c_block = kv_cache.stride(0), p.c_token = kv_cache.stride(1);
  p.table_stride = block_table.stride(0);
  p.tokens = batch * s_q;
  p.scale2 = static_cast<float>(softmax_scale * kv_scale) * LOG2E;
  p.value_scale = static_cast<float>(kv_scale);
  p.causal = causal;
  p.wp = round_up(width, kLanes);
  p.rp = round_up(kv_lora_rank, kLanes);
  const bool is_float = q.scalar_type() == at::kFloat;
  p.keys_in_place = is_float && width % kLanes == 0;
  p.values_in_place = is_float && kv_lora_rank % kLanes == 0;
#if defined(__AVX512BF16__)
  p.dot_bf16 = q.scalar_type() == at::kBFloat16 && width % (2 * kLanes) == 0;
#endif
  if (batch == 0 || s_q == 0 || hq == 0) return;
  float* lse_p = lse.has_value() ? lse->data_ptr<float>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "ascend_ext_mla_decode", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      if (fp8)
        run<scalar_t>(p, q.data_ptr<scalar_t>(), static_cast<const kv_dequant::E4M3*>(kv_cache.data_ptr()), table,
                      lens, out.data_ptr<scalar_t>(), lse_p);
      else
        run<scalar_t>(p, q.data_ptr<scalar_t>(), kv_cache.data_ptr<scalar_t>(), table, lens, out.data_ptr<scalar_t>(),
                      lse_p);
    } else {
      TORCH_CHECK(false, "ascend_ext native mla_decode takes float32, bfloat16 or float16");
    }
  });
}

}  // namespace
}  // namespace ascend_ext

ASCEND_EXT_LIBRARY_FRAGMENT(ASCEND_EXT_OPS_NAMESPACE, m) {
  m.def("mla_decode(Tensor q, Tensor kv_cache, Tensor block_table, Tensor seq_lens, int kv_lora_rank, "
        "float softmax_scale, bool causal, Tensor(a!) out, Tensor(b!)? lse, float kv_scale=1.0) -> ()");
}

ASCEND_EXT_LIBRARY_IMPL(ASCEND_EXT_OPS_NAMESPACE, CPU, m) { m.impl("mla_decode", &ascend_ext::mla_decode); }
