// What the row sources of the native attention share: a row source is a type with
// fill(first, n, out) that points out[j] at the row of key first + j (PagedRows, PackedRows in
// attention.cpp, and the staging sources over them: kv_dequant::DequantRows, kv_tiles::StagedRows).
#pragma once

#include <cstdint>

namespace ascend_ext {
namespace row_source {

// fn(j, row of key first + j) for j < n, the row pointers resolved in chunks of 64.
template <typename Source, typename Fn>
inline void each_row(const Source& source, int64_t first, int64_t n, Fn fn) {
  constexpr int64_t kChunk = 64;
  const typename Source::value_type* raw[kChunk];
  for (int64_t j0 = 0; j0 < n; j0 += kChunk) {
    const int64_t m = n - j0 < kChunk ? n - j0 : kChunk;
    source.fill(first + j0, m, raw);
    for (int64_t j = 0; j < m; ++j) fn(j0 + j, raw[j]);
  }
}

}  // namespace row_source
}  // namespace ascend_ext
