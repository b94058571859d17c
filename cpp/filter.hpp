// Metadata filters evaluated over attributes sections that stay in the caller's (locked)
// buffers: sections are parsed into views, and stored values are compared in place.
// Independent of Python; errors are thrown as std::invalid_argument.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace sealvec {

// Column tags of the attributes layout (see sealvec/attributes.py).
enum AttributeTag : std::uint8_t {
  kTagAbsent = 0,
  kTagNull = 1,
  kTagFalse = 2,
  kTagTrue = 3,
  kTagNumber = 4,
  kTagString = 5,
};

constexpr std::uint64_t kMaxAttributeKeys = 4096;

// One key's column, as views into the section. Numbers and offsets are little-endian and may
// be unaligned; read them with the loaders in filter.cpp.
struct AttributeColumn {
  std::string_view key;                  // UTF-8
  const std::uint8_t* tags = nullptr;    // rows bytes
  const unsigned char* numbers = nullptr;  // rows f64
  const unsigned char* offsets = nullptr;  // rows + 1 u64, offsets[0] == 0, non-decreasing
  const unsigned char* strings = nullptr;  // string_bytes bytes
  std::uint64_t string_bytes = 0;
};

struct AttributeSection {
  std::size_t rows = 0;
  std::vector<AttributeColumn> columns;  // strictly ascending key bytes

  // The column for `key`, or null when the section has no such key (every row absent).
  const AttributeColumn* find(std::string_view key) const;
};

// Validates the whole section (sizes, key count, UTF-8 and order of keys, tags, string
// offsets, no trailing bytes) and returns views into `data`, which must outlive the result.
AttributeSection parse_attribute_section(const unsigned char* data, std::size_t size,
                                         std::size_t rows);

// A filter value given by the caller (copied; never stored data).
struct FilterValue {
  enum class Kind : std::uint8_t { Null, False, True, Number, String };
  Kind kind = Kind::Null;
  double number = 0.0;
  std::string text;  // UTF-8 when kind is String
};

enum class Comparison : std::uint8_t { Eq, Ne, Gt, Gte, Lt, Lte };

// One step of a postfix filter program (as produced by sealvec.attributes.compile_where).
struct FilterInstruction {
  enum class Kind : std::uint8_t { Compare, In, And, Or };
  Kind kind = Kind::Compare;
  std::string key;                  // Compare, In
  Comparison comparison = Comparison::Eq;  // Compare
  std::vector<FilterValue> values;  // Compare: exactly one; In: any number (may be empty)
  bool negate = false;              // In ($nin)
  std::size_t operand_count = 0;    // And, Or: results popped, >= 1
};

// Checks the program leaves exactly one result and never pops more than it has; returns the
// deepest stack it reaches. Throws std::invalid_argument("malformed filter program: ...").
std::size_t validate_filter_program(const std::vector<FilterInstruction>& program);

// Writes 1 to out[row] where the program holds for that row (and base_mask[row] != 0 when
// base_mask is given), else 0, for the concatenation of the sections' rows. Column-wise over
// blocks of rows. The program must have passed validate_filter_program.
void evaluate_filter(const std::vector<FilterInstruction>& program,
                     const std::vector<AttributeSection>& sections,
                     const std::uint8_t* base_mask, std::uint8_t* out);

}  // namespace sealvec
