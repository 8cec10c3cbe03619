// Portable 16-lane float SIMD helpers for the native CPU kernels.
//
// Built on GCC/Clang vector extensions, so one source compiles to AVX-512 (one
// register), AVX2 (two), SSE or NEON (four) depending on -march. Loads accept
// float32, bfloat16 and float16 memory and widen to float32.
#pragma once

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstring>

namespace ascend_ext {
namespace vec {

constexpr int kLanes = 16;
typedef float f16x __attribute__((vector_size(64)));                    // 16 floats
typedef float f16x_unaligned __attribute__((vector_size(64), aligned(4)));
typedef int32_t i16x __attribute__((vector_size(64)));
typedef uint32_t u16x __attribute__((vector_size(64)));
typedef uint16_t h16x_unaligned __attribute__((vector_size(32), aligned(2)));

inline f16x splat(float x) { return f16x{} + x; }

inline f16x as_float(u16x bits) {
  f16x out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

inline u16x as_bits(f16x x) {
  u16x out;
  std::memcpy(&out, &x, sizeof(out));
  return out;
}

// Widening loads of 16 consecutive elements.
inline f16x load(const float* p) { return *reinterpret_cast<const f16x_unaligned*>(p); }

inline f16x load(const c10::BFloat16* p) {
#if defined(__AVX512F__)
  // one zero-extending load + shift (the generic form lowers to four instructions)
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return reinterpret_cast<f16x>(_mm512_slli_epi32(w, 16));
#else
  const h16x_unaligned h = *reinterpret_cast<const h16x_unaligned*>(p);
  return as_float(__builtin_convertvector(h, u16x) << 16);
#endif
}

inline f16x load(const c10::Half* p) {
#if defined(__AVX512F__)
  return reinterpret_cast<f16x>(_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
#else
  // exact binary16 -> binary32 by bit manipulation (normals, subnormals, inf, nan)
  const h16x_unaligned h = *reinterpret_cast<const h16x_unaligned*>(p);
  const u16x w = __builtin_convertvector(h, u16x);
  const u16x sign = (w & 0x8000u) << 16;
  const u16x magnitude = w & 0x7fffu;
  u16x bits = as_bits(as_float(magnitude << 13) * 0x1p112f);
  bits = magnitude >= 0x7c00u ? (bits | 0x7f800000u) : bits;
  return as_float(bits | sign);
#endif
}

inline void store(float* p, f16x x) { *reinterpret_cast<f16x_unaligned*>(p) = x; }

typedef float f8x __attribute__((vector_size(32)));
typedef float f4x __attribute__((vector_size(16)));

// Tree reductions through shuffles (a lane loop serialises 16 dependent adds, and
// taking the address of an accumulator makes compilers spill it every iteration).
inline float hsum(f16x x) {
  const f8x a = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
  const f4x b = __builtin_shufflevector(a, a, 0, 1, 2, 3) + __builtin_shufflevector(a, a, 4, 5, 6, 7);
  return (b[0] + b[2]) + (b[1] + b[3]);
}

inline float hmax(f16x x) {
  const f8x lo = __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7);
  const f8x hi = __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15);
  const f8x a = lo > hi ? lo : hi;
  const f4x c = __builtin_shufflevector(a, a, 0, 1, 2, 3), d = __builtin_shufflevector(a, a, 4, 5, 6, 7);
  const f4x e = c > d ? c : d;
  const float f = e[0] > e[2] ? e[0] : e[2], g = e[1] > e[3] ? e[1] : e[3];
  return f > g ? f : g;
}

// Hint the cache to fetch `bytes` bytes from p.
// Horizontal sums of eight vectors at once: returns lanes 0..7 = hsum(a0)..hsum(a7)
// (lanes 8..15 repeat them) through a transpose-and-add tree, ~3 instructions per
// vector instead of ~8 for eight separate reductions.
inline f16x sum_halves(f16x a, f16x b) {  // lanes 0-7: a folded to 8, 8-15: b folded to 8
  return __builtin_shufflevector(a, b, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
         __builtin_shufflevector(a, b, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}
inline f16x sum_quarters(f16x x, f16x y) {  // four keys, four partial lanes each
  return __builtin_shufflevector(x, y, 0, 1, 2, 3, 8, 9, 10, 11, 16, 17, 18, 19, 24, 25, 26, 27) +
         __builtin_shufflevector(x, y, 4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23, 28, 29, 30, 31);
}
inline f16x sum_eighths(f16x x, f16x y) {  // eight keys, two partial lanes each
  return __builtin_shufflevector(x, y, 0, 1, 4, 5, 8, 9, 12, 13, 16, 17, 20, 21, 24, 25, 28, 29) +
         __builtin_shufflevector(x, y, 2, 3, 6, 7, 10, 11, 14, 15, 18, 19, 22, 23, 26, 27, 30, 31);
}
inline f16x sum_pairs(f16x x, f16x y) {  // sixteen keys, one lane each
  return __builtin_shufflevector(x, y, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30) +
         __builtin_shufflevector(x, y, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
}
inline f16x hsum8(f16x a0, f16x a1, f16x a2, f16x a3, f16x a4, f16x a5, f16x a6, f16x a7) {
  const f16x e = sum_eighths(sum_quarters(sum_halves(a0, a1), sum_halves(a2, a3)),
                             sum_quarters(sum_halves(a4, a5), sum_halves(a6, a7)));
  return sum_pairs(e, e);
}

// Horizontal sums of sixteen vectors at once: lane i = hsum(v[i]).
inline f16x hsum16(const f16x (&v)[16]) {
  f16x quarters[4];
  for (int k = 0; k < 4; ++k)
    quarters[k] = sum_quarters(sum_halves(v[4 * k], v[4 * k + 1]), sum_halves(v[4 * k + 2], v[4 * k + 3]));
  return sum_pairs(sum_eighths(quarters[0], quarters[1]), sum_eighths(quarters[2], quarters[3]));
}

// Prefetch of `bytes` bytes from p into all cache levels (one hint per 64-byte line; the
// non-temporal hint measured slower for the attention streams). Inline asm, not
// __builtin_prefetch: GCC 12 deleted loops of the builtin once they sat in a helper
// (no prefetch instruction left in the object code). Not inlined: one call per row paces the
// hints between the arithmetic (inlined bursts measured 5-10% slower past the LLC).
__attribute__((noinline)) inline void prefetch_lines(const void* p, int64_t bytes) {
  const char* c = static_cast<const char*>(p);
  for (int64_t off = 0; off < bytes; off += 64) {
#if defined(__x86_64__)
    asm volatile("prefetcht0 %0" : : "m"(*(c + off)));
#elif defined(__aarch64__)
    asm volatile("prfm pldl1keep, %0" : : "Q"(*(c + off)));
#else
    __builtin_prefetch(c + off, 0, 3);
#endif
  }
}

// 2^x for x <= 128; lanes below -126 give exactly 0 (masked scores are -inf).
// Round-to-nearest range reduction, then a degree-7 Taylor series of e^(r ln 2) on
// |r| <= 0.5: relative error below 1e-7.
inline f16x exp2(f16x x) {
  const f16x round_magic = splat(12582912.f);  // 1.5 * 2^23
  const f16x clamped = x < -126.f ? splat(-126.f) : x;
  const f16x t = clamped + round_magic;
  const f16x n = t - round_magic;
  const f16x y = (clamped - n) * 0.69314718056f;
  f16x p = splat(1.f / 5040.f);
  p = p * y + 1.f / 720.f;
  p = p * y + 1.f / 120.f;
  p = p * y + 1.f / 24.f;
  p = p * y + 1.f / 6.f;
  p = p * y + 0.5f;
  p = p * y + 1.f;
  p = p * y + 1.f;
  const i16x shift = __builtin_convertvector(n, i16x) << 23;
  const u16x bits = as_bits(p) + reinterpret_cast<const u16x&>(shift);
  return x < -126.f ? splat(0.f) : as_float(bits);
}

// Narrowing stores of 16 float32 lanes into float32 / bfloat16 / float16 memory (round to
// nearest even; the portable forms convert lane by lane).
inline void store_as(float* p, f16x x) { store(p, x); }

inline void store_as(c10::BFloat16* p, f16x x) {
#if defined(__AVX512BF16__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x)));
#else
  for (int i = 0; i < kLanes; ++i) p[i] = c10::BFloat16(x[i]);
#endif
}

inline void store_as(c10::Half* p, f16x x) {
#if defined(__AVX512F__)
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#else
  for (int i = 0; i < kLanes; ++i) p[i] = c10::Half(x[i]);
#endif
}

}  // namespace vec
}  // namespace ascend_ext
