// Native CPU attention kernels of ascend_ext, registered as torch.ops.ascend_ext.*.
//
// One core serves both ops: a group of query rows (the G query heads of one KV head
// times a tile of query tokens) streams key blocks of KEYS_PER_BLOCK keys through an
// online softmax in float32. Per block, the keys are converted to float and
// transposed into a [D][KEYS_PER_BLOCK] buffer, so the score loop is an FMA stream
// over contiguous memory (broadcast q[r][d], add over keys) that the compiler
// vectorises; p.V accumulates rows of V the same way. K/V are read once per group
// (GQA heads share them). Work items (sequence, KV head, query tile, KV split) run in
// parallel through at::parallel_for; KV splits of long decode contexts are merged
// exactly through their log-sum-exp.
//
// Conventions match ascend_ext.ops: bottom-right causal/window alignment, window
// bounds -1 = unbounded, rows that see no key give 0 and lse -inf, caches
// [num_blocks, block_size, Hkv, D] with any strides and a contiguous head dim.

#include <ATen/Parallel.h>
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace ascend_ext {
namespace {

constexpr int64_t KEYS_PER_BLOCK = 32;
constexpr float NEG_INF = -std::numeric_limits<float>::infinity();

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

// Online-softmax state of a group of query rows.
struct RowGroup {
  int64_t rows = 0, dim = 0, dim_v = 0;
  std::vector<float> q, m, l, acc;
  std::vector<int64_t> lo, hi;
  std::vector<float> kt, vb, s;  // scratch: K^T block, V block, scores

  void reset(int64_t r, int64_t d, int64_t dv) {
    rows = r; dim = d; dim_v = dv;
    q.assign(r * d, 0.f);
    m.assign(r, NEG_INF);
    l.assign(r, 0.f);
    acc.assign(r * dv, 0.f);
    lo.assign(r, 0);
    hi.assign(r, 0);
    kt.resize(d * KEYS_PER_BLOCK);
    vb.resize(KEYS_PER_BLOCK * dv);
    s.resize(r * KEYS_PER_BLOCK);
  }
};

// Stream keys [begin, end) through the group. KeyRow(j) / ValueRow(j) give pointers to
// key j's row (head dim contiguous).
template <typename T, typename KeyRow, typename ValueRow>
void attend_range(RowGroup& g, int64_t begin, int64_t end, KeyRow key_row, ValueRow value_row,
                  float scale, float softcap) {
  const int64_t d = g.dim, dv = g.dim_v;
  int64_t min_lo = std::numeric_limits<int64_t>::max(), max_hi = 0;
  for (int64_t r = 0; r < g.rows; ++r) {
    if (g.hi[r] > g.lo[r]) {
      min_lo = std::min(min_lo, g.lo[r]);
      max_hi = std::max(max_hi, g.hi[r]);
    }
  }
  begin = std::max(begin, min_lo == std::numeric_limits<int64_t>::max() ? end : min_lo);
  end = std::min(end, max_hi);
  for (int64_t n0 = begin; n0 < end; n0 += KEYS_PER_BLOCK) {
    const int64_t n = std::min(KEYS_PER_BLOCK, end - n0);
    for (int64_t j = 0; j < n; ++j) {
      const T* kr = key_row(n0 + j);
      const T* vr = value_row(n0 + j);
      for (int64_t c = 0; c < d; ++c) g.kt[c * KEYS_PER_BLOCK + j] = static_cast<float>(kr[c]);
      float* vdst = g.vb.data() + j * dv;
      for (int64_t c = 0; c < dv; ++c) vdst[c] = static_cast<float>(vr[c]);
    }
    for (int64_t r = 0; r < g.rows; ++r) {
      float* s = g.s.data() + r * KEYS_PER_BLOCK;
      const int64_t lo = g.lo[r], hi = g.hi[r];
      if (hi <= n0 || lo >= n0 + n) continue;  // nothing visible in this block
      std::fill(s, s + KEYS_PER_BLOCK, 0.f);
      const float* q = g.q.data() + r * d;
      for (int64_t c = 0; c < d; ++c) {
        const float qc = q[c];
        const float* kc = g.kt.data() + c * KEYS_PER_BLOCK;
#pragma omp simd
        for (int64_t j = 0; j < KEYS_PER_BLOCK; ++j) s[j] += qc * kc[j];
      }
      float block_max = NEG_INF;
      for (int64_t j = 0; j < n; ++j) {
        float x = s[j] * scale;
        if (softcap > 0.f) x = softcap * std::tanh(x / softcap);
        const int64_t key = n0 + j;
        x = (key >= lo && key < hi) ? x : NEG_INF;
        s[j] = x;
        block_max = std::max(block_max, x);
      }
      if (block_max == NEG_INF) continue;
      const float m_new = std::max(g.m[r], block_max);
      const float alpha = g.m[r] == NEG_INF ? 0.f : std::exp(g.m[r] - m_new);
      float* acc = g.acc.data() + r * dv;
      if (alpha != 1.f) {
#pragma omp simd
        for (int64_t c = 0; c < dv; ++c) acc[c] *= alpha;
      }
      float sum = 0.f;
      for (int64_t j = 0; j < n; ++j) {
        if (s[j] == NEG_INF) continue;
        const float p = std::exp(s[j] - m_new);
        sum += p;
        const float* v = g.vb.data() + j * dv;
#pragma omp simd
        for (int64_t c = 0; c < dv; ++c) acc[c] += p * v[c];
      }
      g.l[r] = g.l[r] * alpha + sum;
      g.m[r] = m_new;
    }
  }
}

// Normalised output row and natural-log lse of row r (0 / -inf when it saw nothing).
inline float finish_row(const RowGroup& g, int64_t r, float* out_row) {
  const float l = g.l[r];
  const float* acc = g.acc.data() + r * g.dim_v;
  if (l <= 0.f) {
    std::fill(out_row, out_row + g.dim_v, 0.f);
    return NEG_INF;
  }
  const float inv = 1.f / l;
  for (int64_t c = 0; c < g.dim_v; ++c) out_row[c] = acc[c] * inv;
  return g.m[r] + std::log(l);
}

struct Problem {
  // queries [T, Hq, D]; output [T, Hq, Dv]; lse [Hq, T] (optional)
  int64_t hq, hkv, group, dim, dim_v;
  int64_t q_stride_t, q_stride_h, o_stride_t, o_stride_h;
  float scale, softcap;
  Window window;
};

// Per sequence: (query start, query count, key count); keys reached through key_row/value_row.
template <typename T, typename KeyRowOf, typename ValueRowOf>
void run(const Problem& p, const T* q, T* out, float* lse, int64_t total_tokens, const std::vector<int64_t>& q_start,
         const std::vector<int64_t>& q_len, const std::vector<int64_t>& k_len, KeyRowOf key_row_of,
         ValueRowOf value_row_of) {
  const int64_t batch = static_cast<int64_t>(q_len.size());
  const int64_t threads = at::get_num_threads();
  // query tiles: enough rows per group to amortise the K/V conversion, bounded scratch
  const int64_t tokens_per_tile = std::max<int64_t>(1, 64 / p.group);
  // split long contexts when there are fewer work items than threads
  int64_t items = 0;
  int64_t max_k = 0;
  for (int64_t b = 0; b < batch; ++b) {
    items += p.hkv * ((q_len[b] + tokens_per_tile - 1) / tokens_per_tile);
    max_k = std::max(max_k, k_len[b]);
  }
  int64_t splits = 1;
  if (items < 2 * threads && max_k >= 1024) {
    splits = std::min<int64_t>(std::max<int64_t>(1, (2 * threads + items - 1) / std::max<int64_t>(items, 1)),
                               max_k / 512);
  }
  struct Item { int64_t b, h, t0, t1, split; };
  std::vector<Item> work;
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < p.hkv; ++h)
      for (int64_t t0 = 0; t0 < q_len[b]; t0 += tokens_per_tile)
        for (int64_t sp = 0; sp < splits; ++sp)
          work.push_back({b, h, t0, std::min(q_len[b], t0 + tokens_per_tile), sp});
  // partial results of every (item) when split: [items, rows, dv] + lse
  const int64_t max_rows = tokens_per_tile * p.group;
  std::vector<float> part_out(splits > 1 ? work.size() * max_rows * p.dim_v : 0);
  std::vector<float> part_lse(splits > 1 ? work.size() * max_rows : 0);

  at::parallel_for(0, static_cast<int64_t>(work.size()), 1, [&](int64_t first, int64_t last) {
    RowGroup g;
    std::vector<float> row_out(p.dim_v);
    for (int64_t w = first; w < last; ++w) {
      const Item& it = work[w];
      const int64_t rows = (it.t1 - it.t0) * p.group;
      g.reset(rows, p.dim, p.dim_v);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t t = it.t0 + r / p.group;
        const int64_t head = it.h * p.group + r % p.group;
        const T* qr = q + (q_start[it.b] + t) * p.q_stride_t + head * p.q_stride_h;
        for (int64_t c = 0; c < p.dim; ++c) g.q[r * p.dim + c] = static_cast<float>(qr[c]);
        row_bounds(t, q_len[it.b], k_len[it.b], p.window, g.lo[r], g.hi[r]);
      }
      const int64_t chunk = (k_len[it.b] + splits - 1) / splits;
      const int64_t k0 = std::min(k_len[it.b], it.split * chunk);
      const int64_t k1 = std::min(k_len[it.b], k0 + chunk);
      attend_range<T>(g, k0, k1, key_row_of(it.b, it.h), value_row_of(it.b, it.h), p.scale, p.softcap);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t t = q_start[it.b] + it.t0 + r / p.group;
        const int64_t head = it.h * p.group + r % p.group;
        if (splits > 1) {
          part_lse[w * max_rows + r] = finish_row(g, r, part_out.data() + (w * max_rows + r) * p.dim_v);
        } else {
          const float l = finish_row(g, r, row_out.data());
          T* o = out + t * p.o_stride_t + head * p.o_stride_h;
          for (int64_t c = 0; c < p.dim_v; ++c) o[c] = static_cast<T>(row_out[c]);
          if (lse) lse[head * total_tokens + t] = l;
        }
      }
    }
  });
  if (splits == 1) return;
  // exact merge of the splits of each (sequence, head, tile) through their lse
  at::parallel_for(0, static_cast<int64_t>(work.size() / splits), 1, [&](int64_t first, int64_t last) {
    std::vector<float> merged(p.dim_v);
    for (int64_t base = first; base < last; ++base) {
      const Item& it = work[base * splits];
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
            const float wgt = std::exp(ls - m);
            total += wgt;
            const float* po = part_out.data() + ((base * splits + sp) * max_rows + r) * p.dim_v;
            for (int64_t c = 0; c < p.dim_v; ++c) merged[c] += wgt * po[c];
          }
        }
        const int64_t t = q_start[it.b] + it.t0 + r / p.group;
        const int64_t head = it.h * p.group + r % p.group;
        T* o = out + t * p.o_stride_t + head * p.o_stride_h;
        const float inv = total > 0.f ? 1.f / total : 0.f;
        for (int64_t c = 0; c < p.dim_v; ++c) o[c] = static_cast<T>(merged[c] * inv);
        if (lse) lse[head * total_tokens + t] = total > 0.f ? m + std::log(total) : NEG_INF;
      }
    }
  });
}

std::vector<int64_t> to_vec(const at::Tensor& t) {
  auto c = t.to(at::kCPU, at::kLong).contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

Problem make_problem(const at::Tensor& q, int64_t hkv, int64_t dim_v, const at::Tensor& out, double scale,
                     int64_t left, int64_t right, double softcap) {
  TORCH_CHECK(q.stride(2) == 1 && out.stride(2) == 1, "q and out need a contiguous head dim");
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
  return p;
}

float* lse_ptr(const std::optional<at::Tensor>& lse) {
  if (!lse.has_value()) return nullptr;
  TORCH_CHECK(lse->scalar_type() == at::kFloat && lse->is_contiguous(), "lse must be contiguous float32 [Hq, T]");
  return lse->data_ptr<float>();
}

void paged_attention(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                     const at::Tensor& block_table, const at::Tensor& seq_lens, const at::Tensor& cu_seqlens_q,
                     double scale, int64_t window_left, int64_t window_right, double softcap, at::Tensor& out,
                     const std::optional<at::Tensor>& lse) {
  TORCH_CHECK(k_cache.stride(3) == 1 && v_cache.stride(3) == 1, "caches need a contiguous head dim");
  const Problem p = make_problem(q, k_cache.size(2), v_cache.size(3), out, scale, window_left, window_right, softcap);
  const auto cu = to_vec(cu_seqlens_q);
  const auto lens = to_vec(seq_lens);
  std::vector<int64_t> q_start(cu.begin(), cu.end() - 1), q_len(lens.size());
  for (size_t b = 0; b < lens.size(); ++b) q_len[b] = cu[b + 1] - cu[b];
  const auto table = block_table.to(at::kLong).contiguous();
  const int64_t* tab = table.data_ptr<int64_t>();
  const int64_t width = table.size(1), block = k_cache.size(1);
  const int64_t ks0 = k_cache.stride(0), ks1 = k_cache.stride(1), ks2 = k_cache.stride(2);
  const int64_t vs0 = v_cache.stride(0), vs1 = v_cache.stride(1), vs2 = v_cache.stride(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "ascend_ext_paged_attention", [&] {
    const scalar_t* kb = k_cache.data_ptr<scalar_t>();
    const scalar_t* vb = v_cache.data_ptr<scalar_t>();
    auto key_row_of = [&](int64_t b, int64_t h) {
      return [=](int64_t j) { return kb + tab[b * width + j / block] * ks0 + (j % block) * ks1 + h * ks2; };
    };
    auto value_row_of = [&](int64_t b, int64_t h) {
      return [=](int64_t j) { return vb + tab[b * width + j / block] * vs0 + (j % block) * vs1 + h * vs2; };
    };
    run<scalar_t>(p, q.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse_ptr(lse), q.size(0), q_start, q_len, lens,
                  key_row_of, value_row_of);
  });
}

void flash_attn_varlen(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& cu_seqlens_q,
                       const at::Tensor& cu_seqlens_k, double scale, int64_t window_left, int64_t window_right,
                       double softcap, at::Tensor& out, const std::optional<at::Tensor>& lse) {
  TORCH_CHECK(k.stride(2) == 1 && v.stride(2) == 1, "k and v need a contiguous head dim");
  const Problem p = make_problem(q, k.size(1), v.size(2), out, scale, window_left, window_right, softcap);
  const auto cq = to_vec(cu_seqlens_q);
  const auto ck = to_vec(cu_seqlens_k);
  std::vector<int64_t> q_start(cq.begin(), cq.end() - 1), q_len(cq.size() - 1), k_len(ck.size() - 1);
  for (size_t b = 0; b + 1 < cq.size(); ++b) {
    q_len[b] = cq[b + 1] - cq[b];
    k_len[b] = ck[b + 1] - ck[b];
  }
  const int64_t kst = k.stride(0), ksh = k.stride(1), vst = v.stride(0), vsh = v.stride(1);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "ascend_ext_flash_attn_varlen", [&] {
    const scalar_t* kp = k.data_ptr<scalar_t>();
    const scalar_t* vp = v.data_ptr<scalar_t>();
    auto key_row_of = [&](int64_t b, int64_t h) {
      const scalar_t* base = kp + ck[b] * kst + h * ksh;
      return [=](int64_t j) { return base + j * kst; };
    };
    auto value_row_of = [&](int64_t b, int64_t h) {
      const scalar_t* base = vp + ck[b] * vst + h * vsh;
      return [=](int64_t j) { return base + j * vst; };
    };
    run<scalar_t>(p, q.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), lse_ptr(lse), q.size(0), q_start, q_len, k_len,
                  key_row_of, value_row_of);
  });
}

}  // namespace
}  // namespace ascend_ext

TORCH_LIBRARY(ascend_ext, m) {
  m.def("paged_attention(Tensor q, Tensor k_cache, Tensor v_cache, Tensor block_table, Tensor seq_lens, "
        "Tensor cu_seqlens_q, float scale, int window_left, int window_right, float softcap, Tensor(a!) out, "
        "Tensor(b!)? lse) -> ()");
  m.def("flash_attn_varlen(Tensor q, Tensor k, Tensor v, Tensor cu_seqlens_q, Tensor cu_seqlens_k, float scale, "
        "int window_left, int window_right, float softcap, Tensor(a!) out, Tensor(b!)? lse) -> ()");
}

TORCH_LIBRARY_IMPL(ascend_ext, CPU, m) {
  m.impl("paged_attention", &ascend_ext::paged_attention);
  m.impl("flash_attn_varlen", &ascend_ext::flash_attn_varlen);
}
