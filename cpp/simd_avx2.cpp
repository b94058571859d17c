// AVX2 + FMA variant; this file alone is compiled with -mavx2 -mfma (see CMakeLists.txt).
#include "simd_kernels.hpp"

#if defined(SEALVEC_X86_SIMD) && defined(__x86_64__)
#include <immintrin.h>

namespace sealvec::simd_avx2 {

struct Ops {
  using Vec = __m256;
  static constexpr std::size_t kWidth = 8;
  // 16 ymm registers: 3 rows x 4 queries = 12 accumulators + 3 row vectors + 1 query vector.
  static constexpr int kQueryGroup = 4;
  static constexpr bool kHasReduce4x4 = false;  // see the AVX-512 variant
  static inline void reduce_4x4(const Vec*, float*, std::size_t, int) {}
  static constexpr int rows_for(int queries, bool norms) {
    return queries >= 4 ? 3 : queries == 3 ? (norms ? 2 : 3) : queries == 2 ? (norms ? 3 : 4)
                                                                             : 4;
  }

  static inline Vec zero() { return _mm256_setzero_ps(); }
  static inline Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static inline Vec load_partial(const float* p, std::size_t n) {
    // Lanes i < n get -1 (load), the rest 0 (not touched, read as zero).
    const __m256i lane_index = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), lane_index);
    return _mm256_maskload_ps(p, mask);
  }
  static inline Vec fmadd(Vec a, Vec b, Vec acc) { return _mm256_fmadd_ps(a, b, acc); }
  static inline Vec sub(Vec a, Vec b) { return _mm256_sub_ps(a, b); }
  static inline float reduce(Vec v) {
    const __m128 halves = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    const __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    const __m128 total = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 0x55));
    return _mm_cvtss_f32(total);
  }
};

#include "simd_block_impl.inc"

// bfloat16 widened to float32 (a 16-bit shift) and multiplied with FMA.
struct Bf16Ops {
  using Acc = __m256;
  using Raw = __m256;
  static constexpr std::size_t kStep = 8;
  static constexpr int kQueryGroup = 4;
  static constexpr int kRowGroup = 3;
  static constexpr int kStreamRows = 4;
  static inline Acc zero() { return _mm256_setzero_ps(); }
  static inline Raw widen(__m128i halves) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(halves), 16));
  }
  static inline Raw load(const std::uint16_t* p) {
    return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static inline Raw load_partial(const std::uint16_t* p, std::size_t n) {
    std::uint16_t part[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (std::size_t i = 0; i < n; ++i) part[i] = p[i];
    return widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(part)));
  }
  static inline Acc dot(Raw a, Raw b, Acc acc) { return _mm256_fmadd_ps(a, b, acc); }
  static inline float reduce(Acc v) { return Ops::reduce(v); }
};

#include "simd_bf16_impl.inc"

}  // namespace sealvec::simd_avx2
#endif
