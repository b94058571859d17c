// Block kernels: raw per-(row, query) values for one block of rows and one tile of queries.
// Each ISA variant lives in its own translation unit compiled with its own flags.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sealvec {

enum class Metric { InnerProduct, L2, Cosine };

// Writes out[q * row_count + r] for every query q < query_count and row r < row_count:
//   InnerProduct, Cosine: dot(row r, query q);  L2: sum((row r - query q)^2).
// For Cosine it also writes row_sq_norms[r] = dot(row r, row r), in the same pass.
// Rows and queries are contiguous float32 with `dim` columns; pointers need no alignment.
// The value for a pair depends only on the pair's data, dim and the ISA, never on how rows and
// queries are grouped into blocks, so results do not depend on tiling or thread count.
using BlockKernel = void (*)(Metric metric, const float* rows, std::size_t row_count,
                             const float* queries, std::size_t query_count, std::size_t dim,
                             float* out, float* row_sq_norms);

// bfloat16 rows and queries (bit patterns): out[q * row_count + r] = dot(row r, query q).
using Bf16BlockKernel = void (*)(const std::uint16_t* rows, std::size_t row_count,
                                 const std::uint16_t* queries, std::size_t query_count,
                                 std::size_t dim, float* out);

namespace simd_scalar {
void compute_block(Metric metric, const float* rows, std::size_t row_count, const float* queries,
                   std::size_t query_count, std::size_t dim, float* out, float* row_sq_norms);
void compute_block_bf16(const std::uint16_t* rows, std::size_t row_count,
                        const std::uint16_t* queries, std::size_t query_count, std::size_t dim,
                        float* out);
}

#if defined(SEALVEC_X86_SIMD)
namespace simd_avx2 {
void compute_block(Metric metric, const float* rows, std::size_t row_count, const float* queries,
                   std::size_t query_count, std::size_t dim, float* out, float* row_sq_norms);
void compute_block_bf16(const std::uint16_t* rows, std::size_t row_count,
                        const std::uint16_t* queries, std::size_t query_count, std::size_t dim,
                        float* out);
}
namespace simd_avx512 {
void compute_block(Metric metric, const float* rows, std::size_t row_count, const float* queries,
                   std::size_t query_count, std::size_t dim, float* out, float* row_sq_norms);
void compute_block_bf16(const std::uint16_t* rows, std::size_t row_count,
                        const std::uint16_t* queries, std::size_t query_count, std::size_t dim,
                        float* out);
}
namespace simd_avx512bf16 {
void compute_block_bf16(const std::uint16_t* rows, std::size_t row_count,
                        const std::uint16_t* queries, std::size_t query_count, std::size_t dim,
                        float* out);
}
#endif

}  // namespace sealvec
