// kv_layout "tiles" of a 16-bit paged key cache (ascend_ext/ops/attention/kv_layout.py): the
// 16 slots of each 16-key group of a block hold the group's keys as AMX B operands of
// S = Q K^T. In 32-bit words (a word = one dim pair of one key): word 16 r + g of slot j is
// word 16 r + j of key g, i.e. slot j holds row j of tile r (dims 32 r + 2 j, + 1 of the
// group's 16 keys) at element 32 r. Every 16 x 16 word block is a transpose of the rows layout,
// so one converts the other in place of a copy.
#pragma once

#include <cstdint>
#include <cstring>

#include "vec.h"

namespace ascend_ext {
namespace key_tiles {

constexpr int64_t GROUP = 16;   // keys per tile group

// Word `word` of key `g` of a group whose slot 0 is at `slot0` (slots `stride` words apart).
inline uint32_t& word_of(uint32_t* slot0, int64_t stride, int64_t g, int64_t word) {
  return slot0[(word % GROUP) * stride + word / GROUP * GROUP + g];
}

// Key row (words [0, words)) of key g of a group -> row, and back.
inline void read_key(const uint32_t* slot0, int64_t stride, int64_t g, int64_t words, uint32_t* row) {
  for (int64_t w = 0; w < words; ++w) row[w] = word_of(const_cast<uint32_t*>(slot0), stride, g, w);
}
inline void write_key(const uint32_t* row, uint32_t* slot0, int64_t stride, int64_t g, int64_t words) {
  for (int64_t w = 0; w < words; ++w) word_of(slot0, stride, g, w) = row[w];
}

// Rows of a "tiles" cache for the kernels that read row pointers (no AMX, softcap): fill()
// stages the rows it hands out, keys de-tiled, values (pairs: read by rows::value_pairs as
// stored) copied as they are. Source: a paged row source of 16-bit slots (PagedRows).
template <typename Source>
struct StagedRows {
  using value_type = typename Source::value_type;
  static constexpr bool kStaged = true;   // fill() writes staging: prefetch through prefetch()
  Source source;
  int64_t dim;
  bool detile;                            // keys: de-tile; values: copy
  value_type* staging;

  void fill(int64_t first, int64_t n, const value_type** out) const {
    const int64_t words = dim / 2;
    each_slot(first, n, [&](int64_t j, const value_type* slot, int64_t block_offset) {
      value_type* row = staging + j * dim;
      if (detile) {   // slot - (offset within its group) is the group's slot 0, evenly strided
        const int64_t g = block_offset % GROUP;
        const auto* slot0 = reinterpret_cast<const uint32_t*>(slot - g * source.stride_token);
        read_key(slot0, source.stride_token / 2, g, words, reinterpret_cast<uint32_t*>(row));
      } else {
        std::memcpy(row, slot, dim * sizeof(value_type));
      }
      out[j] = row;
    });
  }

  // Software prefetch of the slots of keys first .. first + n (the stored lines).
  void prefetch(int64_t first, int64_t n) const {
    each_slot(first, n, [&](int64_t, const value_type* slot, int64_t) {
      vec::prefetch_lines(slot, dim * static_cast<int64_t>(sizeof(value_type)));
    });
  }

 private:
  template <typename Fn>
  void each_slot(int64_t first, int64_t n, Fn fn) const {
    constexpr int64_t kChunk = 64;
    const value_type* raw[kChunk];
    for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
      const int64_t m = n - j0 < kChunk ? n - j0 : kChunk;
      source.fill(first + j0, m, raw);
      for (int64_t j = 0; j < m; ++j) fn(j0 + j, raw[j], (first + j0 + j) % source.block);
    }
  }
};

}  // namespace key_tiles
}  // namespace ascend_ext
