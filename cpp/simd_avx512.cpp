// AVX-512 (F/BW/VL/DQ) variant; this file alone is compiled with the AVX-512 flags.
#include "simd_kernels.hpp"

#if defined(SEALVEC_X86_SIMD) && defined(__x86_64__)
#include <immintrin.h>

namespace sealvec::simd_avx512 {

struct Ops {
  using Vec = __m512;
  static constexpr std::size_t kWidth = 16;
  // 32 zmm registers: 4 rows x 6 queries = 24 accumulators + 4 row vectors + 1 query vector.
  static constexpr int kQueryGroup = 6;
  static constexpr int rows_for(int queries, bool norms) {
    return queries >= 6   ? 4
           : queries == 5 ? 4
           : queries == 4 ? 5
           : queries == 3 ? 6
           : queries == 2 ? (norms ? 6 : 8)
                          : 8;
  }

  static inline Vec zero() { return _mm512_setzero_ps(); }
  static inline Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static inline Vec load_partial(const float* p, std::size_t n) {
    // Masked-off lanes are neither read nor faulted on.
    const __mmask16 mask = static_cast<__mmask16>((1u << n) - 1u);
    return _mm512_maskz_loadu_ps(mask, p);
  }
  static inline Vec fmadd(Vec a, Vec b, Vec acc) { return _mm512_fmadd_ps(a, b, acc); }
  static inline Vec sub(Vec a, Vec b) { return _mm512_sub_ps(a, b); }
  static inline float reduce(Vec v) {
    // Fixed order: 512 -> 256 -> 128 -> scalar.
    const __m256 low = _mm512_castps512_ps256(v);
    const __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
    const __m256 quads = _mm256_add_ps(low, high);
    const __m128 halves =
        _mm_add_ps(_mm256_castps256_ps128(quads), _mm256_extractf128_ps(quads, 1));
    const __m128 pairs = _mm_add_ps(halves, _mm_movehl_ps(halves, halves));
    const __m128 total = _mm_add_ss(pairs, _mm_shuffle_ps(pairs, pairs, 0x55));
    return _mm_cvtss_f32(total);
  }
};

#include "simd_block_impl.inc"

}  // namespace sealvec::simd_avx512
#endif
