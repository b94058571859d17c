// AVX-512 with native bfloat16 dot products (AVX512_BF16: VDPBF16PS); this file alone is
// compiled with those flags and is used only where the CPU reports the feature.
#include "simd_kernels.hpp"

#if defined(SEALVEC_X86_SIMD) && defined(__x86_64__)
#include <immintrin.h>

namespace sealvec::simd_avx512bf16 {

struct Bf16Ops {
  using Acc = __m512;
  using Raw = __m512i;  // 32 bfloat16 values
  static constexpr std::size_t kStep = 32;
  static constexpr int kQueryGroup = 6;  // 24 accumulators + 4 rows + 1 query of 32 zmm
  static constexpr int kRowGroup = 4;
  static constexpr int kStreamRows = 8;
  static inline Acc zero() { return _mm512_setzero_ps(); }
  static inline Raw load(const std::uint16_t* p) { return _mm512_loadu_si512(p); }
  static inline Raw load_partial(const std::uint16_t* p, std::size_t n) {
    // Masked-off values are neither read nor faulted on.
    return _mm512_maskz_loadu_epi16(static_cast<__mmask32>((1ull << n) - 1u), p);
  }
  static inline Acc dot(Raw a, Raw b, Acc acc) {
    // acc[i] += a[2i] * b[2i] + a[2i+1] * b[2i+1]
    return _mm512_dpbf16_ps(acc, reinterpret_cast<__m512bh&>(a), reinterpret_cast<__m512bh&>(b));
  }
  static inline float reduce(Acc v) { return _mm512_reduce_add_ps(v); }
};

#include "simd_bf16_impl.inc"

}  // namespace sealvec::simd_avx512bf16
#endif
