// kv_layout "tiles" of a 16-bit paged cache (ascend_ext/ops/attention/kv_layout.py): the K and
// V rows of a (block, KV head) are the halves of one run of slot rows of D + Dv elements (vLLM's
// head-major combined CPU cache), and every 32-key step of a block owns its 32 slot rows, the
// "step region" of 32 (D + Dv) elements, laid out as contiguous 1 KiB AMX B tiles:
//   keys   at element (g * D / 32 + r) * 512 + 32 j + 2 kg + t = k[16 g + kg][32 r + 2 j + t]
//          (B tiles of S = Q K^T: group g of 16 keys, dims [32 r, 32 r + 32), row j = dim pair);
//   values at element 32 D + (c / 16) * 512 + 32 i + 2 (c % 16) + t = v[2 i + t][c]
//          (B tiles of O = P V: dims [16 ch, 16 ch + 16), row i = key pair).
// Every tile is read with one 64-byte row stride (contiguous tile loads streamed 1.5-2.6x faster
// out of L3 than the same tiles strided across slots: benchmarks/NOTES.md, "#19 key tiles").
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <cstring>

#include "row_source.h"
#include "vec.h"

namespace ascend_ext {
namespace kv_tiles {

constexpr int64_t STEP = 32;   // keys per step region (whole steps lie in one block)

// Where a tile starts in a step region (16-bit elements; every tile is 16 rows of 32 elements):
// the key tile of keys [16 g, 16 g + 16) x dims [32 r, 32 r + 32), the value tile of dims
// [16 ch, 16 ch + 16) x the 32 keys.
inline int64_t key_tile(int64_t d, int64_t g, int64_t r) { return (g * (d / 32) + r) * 512; }
inline int64_t value_tile(int64_t d, int64_t ch) { return 32 * d + ch * 512; }

// Offsets of one element in a step region (in 32-bit words for keys, 16-bit elements for values).
inline int64_t key_word(int64_t d, int64_t key, int64_t word) {
  return key_tile(d, key / 16, word / 16) / 2 + 16 * (word % 16) + key % 16;
}
inline int64_t value_element(int64_t d, int64_t key, int64_t c) {
  return value_tile(d, c / 16) + 32 * (key / 2) + 2 * (c % 16) + key % 2;
}

// The caches of a "tiles" call: bfloat16 K and V views that are the halves of one combined cache
// whose slot rows (D + Dv elements) are contiguous per (block, head); block size and head dims
// multiples of 32.
inline void check_caches(const at::Tensor& k, const at::Tensor& v) {
  TORCH_CHECK(k.scalar_type() == at::kBFloat16 && v.scalar_type() == at::kBFloat16, "kv_tiles: bfloat16 caches only");
  const int64_t d = k.size(3), dv = v.size(3);
  TORCH_CHECK(k.size(1) % STEP == 0 && d % 32 == 0 && dv % 32 == 0,
              "kv_tiles: block size and head dims must be multiples of 32, got k_cache ", k.sizes(), ", v_cache ",
              v.sizes());
  TORCH_CHECK(static_cast<const c10::BFloat16*>(v.data_ptr()) == static_cast<const c10::BFloat16*>(k.data_ptr()) + d &&
                  k.stride(1) == d + dv && v.stride(1) == d + dv && k.stride(0) == v.stride(0) &&
                  k.stride(2) == v.stride(2) && k.stride(3) == 1 && v.stride(3) == 1,
              "kv_tiles: k_cache and v_cache must be the two halves of one combined cache with slot rows of D + Dv ",
              "elements contiguous per (block, head), got strides ", k.strides(), " / ", v.strides());
}

// Key `key` (0..31) of the step region at `step` <-> a key row of d 16-bit elements.
inline void read_key(const uint16_t* step, int64_t d, int64_t key, uint16_t* row) {
  const auto* words = reinterpret_cast<const uint32_t*>(step);
  auto* out = reinterpret_cast<uint32_t*>(row);
  for (int64_t w = 0; w < d / 2; ++w) out[w] = words[key_word(d, key, w)];
}
inline void write_key(const uint16_t* row, uint16_t* step, int64_t d, int64_t key) {
  auto* words = reinterpret_cast<uint32_t*>(step);
  uint32_t w32;
  for (int64_t w = 0; w < d / 2; ++w) {
    std::memcpy(&w32, row + 2 * w, sizeof(w32));
    words[key_word(d, key, w)] = w32;
  }
}
// Value `key` of the step region <-> a value row of dv elements (d: the key head dim).
inline void read_value(const uint16_t* step, int64_t d, int64_t dv, int64_t key, uint16_t* row) {
  for (int64_t c = 0; c < dv; ++c) row[c] = step[value_element(d, key, c)];
}
inline void write_value(const uint16_t* row, uint16_t* step, int64_t d, int64_t dv, int64_t key) {
  for (int64_t c = 0; c < dv; ++c) step[value_element(d, key, c)] = row[c];
}

// Rows of a "tiles" cache for the kernels that read row pointers (no AMX, softcap): fill()
// stages plain key or value rows. Source: paged row pointers (PagedRows) into the K view (keys)
// or the V view (values: the slot's K part starts d elements before it).
template <typename Source>
struct StagedRows {
  using value_type = typename Source::value_type;
  static constexpr bool kStaged = true;   // fill() writes staging: prefetch through prefetch()
  Source source;
  int64_t d, dv;
  bool keys;                              // keys (rows of d) or values (rows of dv)
  value_type* staging;

  void fill(int64_t first, int64_t n, const value_type** out) const {
    const int64_t len = keys ? d : dv;
    row_source::each_row(source, first, n, [&](int64_t j, const value_type* slot) {
      const int64_t block_offset = (first + j) % source.block;
      // the step region starts at the K part of the step's first slot
      const auto* step = reinterpret_cast<const uint16_t*>(slot - (keys ? 0 : d) -
                                                           block_offset % STEP * source.stride_token);
      auto* row = reinterpret_cast<uint16_t*>(staging + j * len);
      if (keys) read_key(step, d, block_offset % STEP, row);
      else read_value(step, d, dv, block_offset % STEP, row);
      out[j] = staging + j * len;
    });
  }

  // Software prefetch of the slot rows of keys first .. first + n (the stored lines).
  void prefetch(int64_t first, int64_t n) const {
    row_source::each_row(source, first, n, [&](int64_t, const value_type* slot) {
      vec::prefetch_lines(slot, (keys ? d : dv) * static_cast<int64_t>(sizeof(value_type)));
    });
  }
};

}  // namespace kv_tiles
}  // namespace ascend_ext
