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

  // Sixteen reduce()s at once: acc[4 * r + q] for 4 rows x 4 queries, written to
  // out[q * stride + r] for the first `queries` queries. Every step pairs the same lanes
  // reduce() pairs (i + i+8, then i + i+4, i + i+2, i + i+1), so each sum is
  // bit-identical to reduce().
  static constexpr bool kHasReduce4x4 = true;
  static inline void reduce_4x4(const Vec* acc, float* out, std::size_t stride, int queries) {
    // 512 -> 256: two vectors per register, [fold(a) | fold(b)].
    __m512 folded[8];
    for (int p = 0; p < 8; ++p) {
      const __m512 a = acc[2 * p], b = acc[2 * p + 1];
      folded[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    // 256 -> 128: four vectors per register, one per 128-bit block.
    __m512 quarters[4];
    for (int p = 0; p < 4; ++p) {
      const __m512 a = folded[2 * p], b = folded[2 * p + 1];
      quarters[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)),
                                  _mm512_shuffle_f32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)));
    }
    // 128 -> 64 within each block: block k of pairs[n] holds vectors 8n+k and 8n+4+k.
    __m512 pairs[2];
    for (int n = 0; n < 2; ++n) {
      const __m512 a = quarters[2 * n], b = quarters[2 * n + 1];
      pairs[n] = _mm512_add_ps(_mm512_shuffle_ps(a, b, _MM_SHUFFLE(1, 0, 1, 0)),
                               _mm512_shuffle_ps(a, b, _MM_SHUFFLE(3, 2, 3, 2)));
    }
    // 64 -> 32: lane 4k + j is the sum of acc[k + 4j], i.e. row j of query k.
    const __m512 totals =
        _mm512_add_ps(_mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(2, 0, 2, 0)),
                      _mm512_shuffle_ps(pairs[0], pairs[1], _MM_SHUFFLE(3, 1, 3, 1)));
    _mm_storeu_ps(out, _mm512_castps512_ps128(totals));
    if (queries > 1) _mm_storeu_ps(out + stride, _mm512_extractf32x4_ps(totals, 1));
    if (queries > 2) _mm_storeu_ps(out + 2 * stride, _mm512_extractf32x4_ps(totals, 2));
    if (queries > 3) _mm_storeu_ps(out + 3 * stride, _mm512_extractf32x4_ps(totals, 3));
  }
};

#include "simd_block_impl.inc"

// bfloat16 widened to float32 (a 16-bit shift) and multiplied with FMA; for CPUs with
// AVX-512 but without native bfloat16 dot products.
struct Bf16Ops {
  using Acc = __m512;
  using Raw = __m512;
  static constexpr std::size_t kStep = 16;
  static constexpr int kQueryGroup = 6;
  static constexpr int kRowGroup = 4;
  static constexpr int kStreamRows = 8;
  static inline Acc zero() { return _mm512_setzero_ps(); }
  static inline Raw widen(__m256i halves) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(halves), 16));
  }
  static inline Raw load(const std::uint16_t* p) {
    return widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  }
  static inline Raw load_partial(const std::uint16_t* p, std::size_t n) {
    return widen(_mm256_maskz_loadu_epi16(static_cast<__mmask16>((1u << n) - 1u), p));
  }
  static inline Acc dot(Raw a, Raw b, Acc acc) { return _mm512_fmadd_ps(a, b, acc); }
  static inline float reduce(Acc v) { return Ops::reduce(v); }
};

#include "simd_bf16_impl.inc"

}  // namespace sealvec::simd_avx512
#endif
