#include "filter.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <unordered_set>
#include <utility>

#include "py_buffer.hpp"

namespace py = pybind11;

namespace sealvec {

namespace {

// ---- little-endian loads from possibly unaligned section bytes -----------------------------

inline std::uint64_t load_u64(const unsigned char* bytes) {
  std::uint64_t value = 0;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  std::memcpy(&value, bytes, sizeof(value));  // one unaligned load
#else
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
#endif
  return value;
}

inline std::uint64_t load_u64_at(const unsigned char* base, std::size_t index) {
  return load_u64(base + index * 8);
}

inline double load_f64_at(const unsigned char* base, std::size_t index) {
  const std::uint64_t bits = load_u64_at(base, index);
  double value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
}

inline std::uint64_t padding_to_8(std::uint64_t length) { return (8 - length % 8) % 8; }

// Strict UTF-8 as Python decodes it: no overlong forms, surrogates or values past U+10FFFF.
bool is_valid_utf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size()) {
    const auto lead = static_cast<unsigned char>(text[i]);
    if (lead < 0x80) {
      ++i;
      continue;
    }
    std::size_t length;
    std::uint32_t code_point, smallest;
    if ((lead & 0xE0) == 0xC0) {
      length = 2, code_point = lead & 0x1F, smallest = 0x80;
    } else if ((lead & 0xF0) == 0xE0) {
      length = 3, code_point = lead & 0x0F, smallest = 0x800;
    } else if ((lead & 0xF8) == 0xF0) {
      length = 4, code_point = lead & 0x07, smallest = 0x10000;
    } else {
      return false;
    }
    if (text.size() - i < length) return false;
    for (std::size_t k = 1; k < length; ++k) {
      const auto continuation = static_cast<unsigned char>(text[i + k]);
      if ((continuation & 0xC0) != 0x80) return false;
      code_point = (code_point << 6) | (continuation & 0x3F);
    }
    if (code_point < smallest || code_point > 0x10FFFF ||
        (code_point >= 0xD800 && code_point <= 0xDFFF))
      return false;
    i += length;
  }
  return true;
}

// ---- section parsing -----------------------------------------------------------------------

// Sequential, bounds-checked reads over one section.
class SectionReader {
 public:
  SectionReader(const unsigned char* data, std::size_t size) : data_(data), size_(size) {}

  // The next `count` items of `item_bytes` each; throws if the section is too short.
  const unsigned char* take(std::uint64_t count, std::size_t item_bytes, const char* what) {
    const std::uint64_t remaining = size_ - position_;
    if (count > remaining / item_bytes)
      throw std::invalid_argument(
          "attributes section is truncated: " + std::string(what) + " needs " +
          (count > std::numeric_limits<std::uint64_t>::max() / item_bytes
               ? std::string("more than 2**64")
               : std::to_string(count * item_bytes)) +
          " bytes at offset " + std::to_string(position_) + ", only " +
          std::to_string(remaining) + " remain");
    const unsigned char* start = data_ + position_;
    position_ += static_cast<std::size_t>(count * item_bytes);
    return start;
  }
  std::uint64_t read_u64(const char* what) { return load_u64(take(1, 8, what)); }
  void skip_padding(std::uint64_t length) { take(padding_to_8(length), 1, "padding"); }
  std::size_t position() const { return position_; }
  std::size_t size() const { return size_; }

 private:
  const unsigned char* data_;
  std::size_t size_;
  std::size_t position_ = 0;
};

std::string quoted_key(std::string_view key) {
  constexpr std::size_t kShown = 64;
  std::string shown(key.substr(0, kShown));
  return "'" + shown + (key.size() > kShown ? "...'" : "'");
}

AttributeColumn parse_column(SectionReader& reader, std::size_t rows) {
  AttributeColumn column;
  const std::uint64_t key_length = reader.read_u64("key length");
  column.key = std::string_view(reinterpret_cast<const char*>(reader.take(key_length, 1, "key")),
                                static_cast<std::size_t>(key_length));
  if (!is_valid_utf8(column.key))
    throw std::invalid_argument("attributes section has a key that is not valid UTF-8");
  reader.skip_padding(key_length);
  column.tags = reader.take(rows, 1, "tags");
  reader.skip_padding(rows);
  column.numbers = reader.take(rows, 8, "numbers");
  column.offsets = reader.take(rows, 8, "string offsets");
  reader.take(1, 8, "string offsets");  // the final offset, rows + 1 in all
  // Branch-free passes over every row first (they vectorise); the failing row is found after.
  std::uint8_t largest_tag = 0;
  for (std::size_t row = 0; row < rows; ++row)
    largest_tag = std::max(largest_tag, column.tags[row]);
  if (largest_tag > kTagString) {
    std::size_t row = 0;
    while (column.tags[row] <= kTagString) ++row;
    throw std::invalid_argument("attributes section column " + quoted_key(column.key) +
                                " has tag " + std::to_string(column.tags[row]) + " at row " +
                                std::to_string(row) + " (tags are 0 to 5)");
  }
  if (load_u64_at(column.offsets, 0) != 0)
    throw std::invalid_argument("attributes section column " + quoted_key(column.key) +
                                " has string offsets that do not start at 0");
  bool offsets_ascend = true;
  for (std::size_t row = 0; row < rows; ++row)
    offsets_ascend &= load_u64_at(column.offsets, row + 1) >= load_u64_at(column.offsets, row);
  if (!offsets_ascend) {
    std::size_t row = 0;
    while (load_u64_at(column.offsets, row + 1) >= load_u64_at(column.offsets, row)) ++row;
    throw std::invalid_argument("attributes section column " + quoted_key(column.key) +
                                " has decreasing string offsets at row " +
                                std::to_string(row + 1));
  }
  column.string_bytes = load_u64_at(column.offsets, rows);
  column.strings = reader.take(column.string_bytes, 1, "string bytes");
  reader.skip_padding(column.string_bytes);
  return column;
}

// ---- evaluation ----------------------------------------------------------------------------

// A stored string, re-checked against the section: the buffer is only read, but a writable one
// could change after parsing, and a bad offset must not read outside it.
inline std::string_view stored_string(const AttributeColumn& column, std::size_t row) {
  const std::uint64_t begin = load_u64_at(column.offsets, row);
  const std::uint64_t end = load_u64_at(column.offsets, row + 1);
  if (begin > end || end > column.string_bytes)
    throw std::invalid_argument("attributes section changed while it was being filtered");
  return std::string_view(reinterpret_cast<const char*>(column.strings) + begin,
                          static_cast<std::size_t>(end - begin));
}

// The values an eq / ne / $in / $nin step matches, organised by tag.
class ValueSet {
 public:
  // `values` (or null for an empty set) must outlive the set: strings are viewed, not copied.
  explicit ValueSet(const std::vector<FilterValue>* values) {
    if (values == nullptr) return;
    for (const FilterValue& value : *values) {
      switch (value.kind) {
        case FilterValue::Kind::Null: null_ = true; break;
        case FilterValue::Kind::False: false_ = true; break;
        case FilterValue::Kind::True: true_ = true; break;
        case FilterValue::Kind::Number:
          if (!std::isnan(value.number)) numbers_.push_back(value.number);  // NaN equals nothing
          break;
        case FilterValue::Kind::String: strings_.emplace_back(value.text); break;
      }
    }
    std::sort(numbers_.begin(), numbers_.end());
    std::sort(strings_.begin(), strings_.end());
    strings_.erase(std::unique(strings_.begin(), strings_.end()), strings_.end());
    if (strings_.size() > kLinearStrings) hashed_strings_.insert(strings_.begin(), strings_.end());
  }

  bool needs_strings() const { return !strings_.empty(); }

  bool matches(const AttributeColumn& column, std::size_t row) const {
    switch (column.tags[row]) {
      case kTagNull: return null_;
      case kTagFalse: return false_;
      case kTagTrue: return true_;
      case kTagNumber:
        return !numbers_.empty() && std::binary_search(numbers_.begin(), numbers_.end(),
                                                       load_f64_at(column.numbers, row));
      case kTagString: return !strings_.empty() && contains_string(stored_string(column, row));
      default: return false;
    }
  }

 private:
  static constexpr std::size_t kLinearStrings = 16;

  bool contains_string(std::string_view text) const {
    if (strings_.size() > kLinearStrings) return hashed_strings_.count(text) != 0;
    for (std::string_view candidate : strings_)
      if (candidate == text) return true;
    return false;
  }

  bool null_ = false, false_ = false, true_ = false;
  std::vector<double> numbers_;          // sorted, no NaN
  std::vector<std::string_view> strings_;  // views of the program's own texts, sorted, unique
  std::unordered_set<std::string_view> hashed_strings_;
};

// A program step with its value set prepared once for all sections.
struct PreparedStep {
  const FilterInstruction* instruction;
  bool membership;  // eq, ne, $in, $nin
  bool negate;      // ne, $nin
  ValueSet values;
};

std::vector<PreparedStep> prepare_steps(const std::vector<FilterInstruction>& program) {
  std::vector<PreparedStep> steps;
  steps.reserve(program.size());
  for (const FilterInstruction& instruction : program) {
    using Kind = FilterInstruction::Kind;
    const bool compare = instruction.kind == Kind::Compare;
    const bool membership =
        instruction.kind == Kind::In ||
        (compare && (instruction.comparison == Comparison::Eq ||
                     instruction.comparison == Comparison::Ne));
    const bool negate = membership && (instruction.kind == Kind::In
                                           ? instruction.negate
                                           : instruction.comparison == Comparison::Ne);
    // Range steps keep their value in the instruction; the set views the program's texts.
    steps.push_back(PreparedStep{&instruction, membership, negate,
                                 ValueSet(membership ? &instruction.values : nullptr)});
  }
  return steps;
}

template <typename Body>
void with_ordering(Comparison comparison, Body&& body) {
  switch (comparison) {
    case Comparison::Gt: body(std::greater<>()); break;
    case Comparison::Gte: body(std::greater_equal<>()); break;
    case Comparison::Lt: body(std::less<>()); break;
    case Comparison::Lte: body(std::less_equal<>()); break;
    default: break;  // eq / ne are membership steps
  }
}

// result[i] for rows first .. first + count of one section.
void evaluate_leaf(const PreparedStep& step, const AttributeColumn* column, std::size_t first,
                   std::size_t count, std::uint8_t* result) {
  if (column == nullptr) {  // the key is absent from every row of this section
    std::memset(result, step.membership && step.negate ? 1 : 0, count);
    return;
  }
  const std::uint8_t* tags = column->tags + first;
  if (step.membership) {
    for (std::size_t i = 0; i < count; ++i)
      result[i] = static_cast<std::uint8_t>(step.values.matches(*column, first + i) != step.negate);
    return;
  }
  const FilterValue& value = step.instruction->values.front();
  if (value.kind == FilterValue::Kind::Number) {
    with_ordering(step.instruction->comparison, [&](auto ordered) {
      for (std::size_t i = 0; i < count; ++i) {
        const double stored = load_f64_at(column->numbers, first + i);
        result[i] =
            static_cast<std::uint8_t>((tags[i] == kTagNumber) & ordered(stored, value.number));
      }
    });
  } else if (value.kind == FilterValue::Kind::String) {
    const std::string_view text(value.text);
    with_ordering(step.instruction->comparison, [&](auto ordered) {
      for (std::size_t i = 0; i < count; ++i)
        result[i] = static_cast<std::uint8_t>(
            tags[i] == kTagString && ordered(stored_string(*column, first + i).compare(text), 0));
    });
  } else {  // null and bools have no order
    std::memset(result, 0, count);
  }
}

constexpr std::size_t kMaxBlockRows = 4096;
constexpr std::size_t kMinBlockRows = 64;
constexpr std::size_t kStackBudgetBytes = std::size_t{4} << 20;

}  // namespace

const AttributeColumn* AttributeSection::find(std::string_view key) const {
  auto found = std::lower_bound(
      columns.begin(), columns.end(), key,
      [](const AttributeColumn& column, std::string_view wanted) { return column.key < wanted; });
  return found != columns.end() && found->key == key ? &*found : nullptr;
}

AttributeSection parse_attribute_section(const unsigned char* data, std::size_t size,
                                         std::size_t rows) {
  AttributeSection section;
  section.rows = rows;
  SectionReader reader(data, size);
  const std::uint64_t key_count = reader.read_u64("key count");
  if (key_count > kMaxAttributeKeys)
    throw std::invalid_argument("attributes section has " + std::to_string(key_count) +
                                " keys, more than the limit of " +
                                std::to_string(kMaxAttributeKeys));
  section.columns.reserve(static_cast<std::size_t>(key_count));
  for (std::uint64_t k = 0; k < key_count; ++k) {
    AttributeColumn column = parse_column(reader, rows);
    if (!section.columns.empty()) {
      const std::string_view previous = section.columns.back().key;
      if (column.key == previous)
        throw std::invalid_argument("attributes section has the key " + quoted_key(column.key) +
                                    " twice");
      if (column.key < previous)
        throw std::invalid_argument("attributes section keys are not in ascending order (" +
                                    quoted_key(column.key) + " after " + quoted_key(previous) +
                                    ")");
    }
    section.columns.push_back(column);
  }
  if (reader.position() != reader.size())
    throw std::invalid_argument("attributes section has " +
                                std::to_string(reader.size() - reader.position()) +
                                " trailing bytes");
  return section;
}

std::size_t validate_filter_program(const std::vector<FilterInstruction>& program) {
  if (program.empty()) throw std::invalid_argument("malformed filter program: it is empty");
  std::size_t depth = 0, deepest = 0;
  for (std::size_t i = 0; i < program.size(); ++i) {
    const FilterInstruction& instruction = program[i];
    const std::string where = "malformed filter program: step " + std::to_string(i);
    switch (instruction.kind) {
      case FilterInstruction::Kind::Compare:
        if (instruction.values.size() != 1)
          throw std::invalid_argument(where + " compares with " +
                                      std::to_string(instruction.values.size()) +
                                      " values instead of 1");
        ++depth;
        break;
      case FilterInstruction::Kind::In:
        ++depth;
        break;
      case FilterInstruction::Kind::And:
      case FilterInstruction::Kind::Or:
        if (instruction.operand_count == 0)
          throw std::invalid_argument(where + " combines 0 results");
        if (instruction.operand_count > depth)
          throw std::invalid_argument(where + " combines " +
                                      std::to_string(instruction.operand_count) +
                                      " results but only " + std::to_string(depth) +
                                      " are available");
        depth -= instruction.operand_count - 1;
        break;
    }
    deepest = std::max(deepest, depth);
  }
  if (depth != 1)
    throw std::invalid_argument("malformed filter program: it leaves " + std::to_string(depth) +
                                " results instead of 1");
  return deepest;
}

void evaluate_filter(const std::vector<FilterInstruction>& program,
                     const std::vector<AttributeSection>& sections,
                     const std::uint8_t* base_mask, std::uint8_t* out) {
  const std::size_t deepest = validate_filter_program(program);
  const std::vector<PreparedStep> steps = prepare_steps(program);
  // One result vector per stack slot, for a block of rows; blocks shrink for deep programs.
  const std::size_t block_rows =
      std::clamp(kStackBudgetBytes / deepest / kMinBlockRows * kMinBlockRows, kMinBlockRows,
                 kMaxBlockRows);
  std::vector<std::vector<std::uint8_t>> stack(deepest, std::vector<std::uint8_t>(block_rows));
  std::vector<const AttributeColumn*> columns(steps.size());

  std::size_t section_start = 0;
  for (const AttributeSection& section : sections) {
    for (std::size_t s = 0; s < steps.size(); ++s)
      columns[s] = steps[s].instruction->kind == FilterInstruction::Kind::Compare ||
                           steps[s].instruction->kind == FilterInstruction::Kind::In
                       ? section.find(steps[s].instruction->key)
                       : nullptr;
    for (std::size_t first = 0; first < section.rows; first += block_rows) {
      const std::size_t count = std::min(block_rows, section.rows - first);
      std::uint8_t* block_out = out + section_start + first;
      const std::uint8_t* block_base = base_mask ? base_mask + section_start + first : nullptr;
      if (block_base && std::all_of(block_base, block_base + count,
                                    [](std::uint8_t allowed) { return allowed == 0; })) {
        std::memset(block_out, 0, count);
        continue;
      }
      std::size_t depth = 0;
      for (std::size_t s = 0; s < steps.size(); ++s) {
        const FilterInstruction& instruction = *steps[s].instruction;
        if (instruction.kind == FilterInstruction::Kind::Compare ||
            instruction.kind == FilterInstruction::Kind::In) {
          evaluate_leaf(steps[s], columns[s], first, count, stack[depth++].data());
          continue;
        }
        depth -= instruction.operand_count;
        std::uint8_t* target = stack[depth].data();
        const bool conjunction = instruction.kind == FilterInstruction::Kind::And;
        for (std::size_t operand = 1; operand < instruction.operand_count; ++operand) {
          const std::uint8_t* other = stack[depth + operand].data();
          if (conjunction) {
            for (std::size_t i = 0; i < count; ++i) target[i] &= other[i];
          } else {
            for (std::size_t i = 0; i < count; ++i) target[i] |= other[i];
          }
        }
        ++depth;
      }
      const std::uint8_t* result = stack[0].data();
      if (block_base) {
        for (std::size_t i = 0; i < count; ++i)
          block_out[i] = static_cast<std::uint8_t>(result[i] & (block_base[i] != 0));
      } else {
        std::memcpy(block_out, result, count);
      }
    }
    section_start += section.rows;
  }
}

// ---- Python binding ------------------------------------------------------------------------

namespace {

[[noreturn]] void program_error(const std::string& message) {
  throw py::value_error("malformed filter program: " + message);
}

std::string type_name(py::handle object) { return std::string(py::str(py::type::of(object))); }

std::string utf8_of(py::handle text, const std::string& where) {
  Py_ssize_t length = 0;
  const char* utf8 = PyUnicode_AsUTF8AndSize(text.ptr(), &length);
  if (utf8 == nullptr) {
    PyErr_Clear();
    program_error(where + " is not encodable as UTF-8");
  }
  return std::string(utf8, static_cast<std::size_t>(length));
}

FilterValue filter_value(py::handle value, const std::string& where) {
  FilterValue result;
  if (value.is_none()) {
    result.kind = FilterValue::Kind::Null;
  } else if (PyBool_Check(value.ptr())) {
    result.kind = value.ptr() == Py_True ? FilterValue::Kind::True : FilterValue::Kind::False;
  } else if (PyLong_Check(value.ptr())) {
    result.kind = FilterValue::Kind::Number;
    result.number = PyLong_AsDouble(value.ptr());
    if (result.number == -1.0 && PyErr_Occurred()) {
      PyErr_Clear();
      program_error(where + " is an integer too large for float64");
    }
  } else if (PyFloat_Check(value.ptr())) {
    result.kind = FilterValue::Kind::Number;
    result.number = PyFloat_AS_DOUBLE(value.ptr());
  } else if (PyUnicode_Check(value.ptr())) {
    result.kind = FilterValue::Kind::String;
    result.text = utf8_of(value, where);
  } else {
    program_error(where + " must be None, bool, int, float or str, got " + type_name(value));
  }
  return result;
}

bool is_list_or_tuple(py::handle object) {
  return PyList_Check(object.ptr()) || PyTuple_Check(object.ptr());
}

Comparison parse_comparison(const std::string& name, const std::string& where) {
  if (name == "eq") return Comparison::Eq;
  if (name == "ne") return Comparison::Ne;
  if (name == "gt") return Comparison::Gt;
  if (name == "gte") return Comparison::Gte;
  if (name == "lt") return Comparison::Lt;
  if (name == "lte") return Comparison::Lte;
  program_error(where + " has operator '" + name + "', not one of eq, ne, gt, gte, lt, lte");
}

FilterInstruction filter_instruction(py::handle step, const std::string& where) {
  if (!is_list_or_tuple(step) || py::len(step) == 0)
    program_error(where + " must be a non-empty tuple, got " + type_name(step));
  const py::sequence fields = py::reinterpret_borrow<py::sequence>(step);
  const std::size_t field_count = py::len(fields);
  if (!PyUnicode_Check(fields[0].ptr()))
    program_error(where + " must start with 'cmp', 'in', 'and' or 'or'");
  const std::string name = utf8_of(fields[0], where + "[0]");
  FilterInstruction instruction;
  if (name == "cmp" || name == "in") {
    if (field_count != 4) program_error(where + " ('" + name + "', ...) must have 4 fields");
    if (!PyUnicode_Check(fields[1].ptr()))
      program_error(where + " key must be a str, got " + type_name(fields[1]));
    instruction.key = utf8_of(fields[1], where + " key");
    if (name == "cmp") {
      instruction.kind = FilterInstruction::Kind::Compare;
      if (!PyUnicode_Check(fields[2].ptr()))
        program_error(where + " operator must be a str, got " + type_name(fields[2]));
      instruction.comparison = parse_comparison(utf8_of(fields[2], where), where);
      instruction.values.push_back(filter_value(fields[3], where + " value"));
    } else {
      instruction.kind = FilterInstruction::Kind::In;
      if (!is_list_or_tuple(fields[2]))
        program_error(where + " values must be a list, got " + type_name(fields[2]));
      const py::sequence values = py::reinterpret_borrow<py::sequence>(fields[2]);
      for (std::size_t v = 0; v < py::len(values); ++v)
        instruction.values.push_back(
            filter_value(values[v], where + " values[" + std::to_string(v) + "]"));
      if (!PyBool_Check(fields[3].ptr()))
        program_error(where + " negate flag must be a bool, got " + type_name(fields[3]));
      instruction.negate = fields[3].ptr() == Py_True;
    }
  } else if (name == "and" || name == "or") {
    if (field_count != 2) program_error(where + " ('" + name + "', n) must have 2 fields");
    const py::handle count = fields[1];
    if (!PyLong_Check(count.ptr()) || PyBool_Check(count.ptr()))
      program_error(where + " count must be an int, got " + type_name(count));
    const long long operand_count = PyLong_AsLongLong(count.ptr());
    if (operand_count == -1 && PyErr_Occurred()) PyErr_Clear();
    if (operand_count < 1)
      program_error(where + " count must be a positive int of sensible size");
    instruction.kind =
        name == "and" ? FilterInstruction::Kind::And : FilterInstruction::Kind::Or;
    instruction.operand_count = static_cast<std::size_t>(operand_count);
  } else {
    program_error(where + " has unknown kind '" + name + "' (expected cmp, in, and, or)");
  }
  return instruction;
}

std::vector<FilterInstruction> filter_program(const py::object& program) {
  if (!is_list_or_tuple(program))
    program_error("program must be a list of tuples, got " + type_name(program));
  const py::sequence steps = py::reinterpret_borrow<py::sequence>(program);
  std::vector<FilterInstruction> instructions;
  instructions.reserve(py::len(steps));
  for (std::size_t i = 0; i < py::len(steps); ++i)
    instructions.push_back(filter_instruction(steps[i], "program[" + std::to_string(i) + "]"));
  return instructions;
}

py::array_t<std::uint8_t> filter_mask(const py::sequence& sections, const py::sequence& rows,
                                      const py::object& program, const py::object& base_mask) {
  // The program becomes C++ structures first (the only Python objects it reads).
  const std::vector<FilterInstruction> instructions = filter_program(program);
  validate_filter_program(instructions);

  if (py::len(sections) != py::len(rows))
    throw py::value_error("sections and rows must have one entry per shard, got " +
                          std::to_string(py::len(sections)) + " and " +
                          std::to_string(py::len(rows)));
  std::vector<PyBufferView> views;
  std::vector<std::size_t> row_counts;
  views.reserve(py::len(sections));
  std::size_t total = 0;
  for (std::size_t i = 0; i < py::len(sections); ++i) {
    const std::string index = "[" + std::to_string(i) + "]";
    const py::handle count = rows[i];
    if (!PyLong_Check(count.ptr()) || PyBool_Check(count.ptr()))
      throw py::value_error("rows" + index + " must be an int, got " + type_name(count));
    const Py_ssize_t row_count = PyLong_AsSsize_t(count.ptr());
    if (row_count == -1 && PyErr_Occurred()) PyErr_Clear();
    if (row_count < 0)
      throw py::value_error("rows" + index + " must be between 0 and 2**63 - 1");
    if (static_cast<std::size_t>(row_count) >
        static_cast<std::size_t>(std::numeric_limits<Py_ssize_t>::max()) - total)
      throw py::value_error("rows add up to more than 2**63 - 1");
    total += static_cast<std::size_t>(row_count);
    row_counts.push_back(static_cast<std::size_t>(row_count));
    views.push_back(PyBufferView::acquire(sections[i], "sections" + index));
  }

  PyBufferView base_view;
  if (!base_mask.is_none()) {
    base_view = PyBufferView::acquire(base_mask, "base_mask");
    if (base_view.size() != total)
      throw py::value_error("base_mask must have one uint8 per row (" + std::to_string(total) +
                            " bytes), got " + std::to_string(base_view.size()) + " bytes");
  }

  py::array_t<std::uint8_t> result(static_cast<py::ssize_t>(total));
  std::uint8_t* out = result.mutable_data();
  {
    py::gil_scoped_release without_gil;
    std::vector<AttributeSection> parsed;
    parsed.reserve(views.size());
    for (std::size_t i = 0; i < views.size(); ++i) {
      try {
        parsed.push_back(parse_attribute_section(views[i].data(), views[i].size(), row_counts[i]));
      } catch (const std::invalid_argument& error) {
        throw std::invalid_argument("sections[" + std::to_string(i) + "]: " + error.what());
      }
    }
    evaluate_filter(instructions, parsed, base_view.held() ? base_view.data() : nullptr, out);
  }
  return result;
}

}  // namespace

void register_filter(py::module_& module) {
  module.def("filter_mask", &filter_mask, py::arg("sections"), py::arg("rows"),
             py::arg("program"), py::arg("base_mask") = py::none(),
             "uint8 mask over the concatenated rows of attributes sections where the postfix "
             "filter program (sealvec.attributes.compile_where) holds, ANDed with base_mask.");
}

}  // namespace sealvec
