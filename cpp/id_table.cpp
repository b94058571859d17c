#include "id_table.hpp"

#include <pybind11/stl.h>

#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>

namespace py = pybind11;

namespace sealvec {

namespace {

std::uint64_t load_little_endian_u64(const unsigned char* bytes) {
  std::uint64_t value = 0;
  for (int i = 7; i >= 0; --i) value = (value << 8) | bytes[i];
  return value;
}

}  // namespace

class IdTable::Operation {
 public:
  explicit Operation(IdTable& table) : table_(table) {
    table_.ensure_open();
    ++table_.active_operations_;
  }
  ~Operation() {
    // The last operation to finish performs a close() that arrived meanwhile.
    if (--table_.active_operations_ == 0 && table_.closed_) table_.release_views();
  }

 private:
  IdTable& table_;
};

IdTable::IdTable(const py::sequence& offsets, const py::sequence& data) {
  if (py::len(offsets) != py::len(data))
    throw py::value_error("offsets and data must have one entry per shard, got " +
                          std::to_string(py::len(offsets)) + " and " +
                          std::to_string(py::len(data)));
  // Hold a view of every buffer and validate its offsets completely.
  for (std::size_t i = 0; i < py::len(offsets); ++i) {
    const std::string index = "[" + std::to_string(i) + "]";
    Shard shard{PyBufferView::acquire(offsets[i], "offsets" + index),
                PyBufferView::acquire(data[i], "data" + index), row_count_, 0};
    const std::size_t offset_bytes = shard.offsets.size();
    if (offset_bytes < 8 || offset_bytes % 8 != 0)
      throw py::value_error("offsets" + index + " must hold n+1 little-endian uint64 (" +
                            std::to_string(offset_bytes) + " bytes given)");
    shard.row_count = offset_bytes / 8 - 1;
    if (offset(shard, 0) != 0) throw py::value_error("offsets" + index + "[0] must be 0");
    for (std::size_t j = 0; j < shard.row_count; ++j)
      if (offset(shard, j + 1) < offset(shard, j))
        throw py::value_error("offsets" + index + " must be non-decreasing (at " +
                              std::to_string(j + 1) + ")");
    if (offset(shard, shard.row_count) != shard.data.size())
      throw py::value_error("offsets" + index + " must end at len(data" + index + ") = " +
                            std::to_string(shard.data.size()) + ", ends at " +
                            std::to_string(offset(shard, shard.row_count)));
    row_count_ += shard.row_count;
    shards_.push_back(std::move(shard));
  }
  // Index every row; later rows with the same id chain back to earlier ones.
  newest_row_.reserve(row_count_);
  previous_same_id_.assign(row_count_, -1);
  for (std::size_t row = 0; row < row_count_; ++row) {
    auto [entry, inserted] = newest_row_.emplace(id_view(row), static_cast<std::int64_t>(row));
    if (!inserted) {
      previous_same_id_[row] = entry->second;
      entry->second = static_cast<std::int64_t>(row);
    }
  }
}

IdTable::~IdTable() { release_views(); }

void IdTable::ensure_open() const {
  if (closed_) throw py::value_error("IdTable is closed");
}

void IdTable::release_views() {
  newest_row_.clear();
  std::unordered_map<std::string_view, std::int64_t>().swap(newest_row_);
  for (Shard& shard : shards_) {
    shard.offsets.release();
    shard.data.release();
  }
}

void IdTable::close() {
  closed_ = true;
  if (active_operations_ == 0) release_views();
}

std::size_t IdTable::size() const {
  ensure_open();
  return row_count_;
}

std::uint64_t IdTable::offset(const Shard& shard, std::size_t index) const {
  return load_little_endian_u64(shard.offsets.data() + index * 8);
}

std::string_view IdTable::id_view(std::size_t row) const {
  // Find the shard holding `row` (shards are few; binary search on first_row).
  auto it = std::upper_bound(shards_.begin(), shards_.end(), row,
                             [](std::size_t r, const Shard& s) { return r < s.first_row; });
  const Shard& shard = *(it - 1);
  const std::size_t local = row - shard.first_row;
  // Re-check bounds: the buffers may be writable and changed since validation.
  const std::uint64_t begin = offset(shard, local), end = offset(shard, local + 1);
  if (begin > end || end > shard.data.size())
    throw py::value_error("IdTable offsets changed after construction");
  return std::string_view(reinterpret_cast<const char*>(shard.data.data()) + begin, end - begin);
}

py::array_t<std::int64_t> IdTable::lookup(const py::list& ids, const py::object& mask) {
  Operation operation(*this);
  // Borrow UTF-8 views of the query strings; `holders` keeps them alive without the GIL.
  std::vector<py::object> holders;
  std::vector<std::string_view> keys;
  holders.reserve(ids.size());
  keys.reserve(ids.size());
  for (py::handle id : ids) {
    if (!PyUnicode_Check(id.ptr()))
      throw py::value_error("ids must be a list of str, got " +
                            std::string(py::str(py::type::of(id))));
    Py_ssize_t length = 0;
    const char* utf8 = PyUnicode_AsUTF8AndSize(id.ptr(), &length);
    if (utf8 == nullptr) throw py::error_already_set();
    holders.push_back(py::reinterpret_borrow<py::object>(id));
    keys.emplace_back(utf8, static_cast<std::size_t>(length));
  }
  PyBufferView mask_view;
  const unsigned char* live = nullptr;
  if (!mask.is_none()) {
    mask_view = PyBufferView::acquire(mask, "mask");
    if (mask_view.size() != row_count_)
      throw py::value_error("mask must have one uint8 per row (" + std::to_string(row_count_) +
                            " bytes), got " + std::to_string(mask_view.size()) + " bytes");
    live = mask_view.data();
  }
  py::array_t<std::int64_t> result(static_cast<py::ssize_t>(keys.size()));
  std::int64_t* out = result.mutable_data();
  {
    py::gil_scoped_release without_gil;
    // Newest row first, walking back through older duplicates until one is live.
    for (std::size_t i = 0; i < keys.size(); ++i) {
      std::int64_t row = -1;
      auto found = newest_row_.find(keys[i]);
      if (found != newest_row_.end()) {
        row = found->second;
        while (row >= 0 && live != nullptr && live[row] == 0) row = previous_same_id_[row];
      }
      out[i] = row;
    }
  }
  return result;
}

py::str IdTable::id_at(std::int64_t row) {
  Operation operation(*this);
  if (row < 0 || static_cast<std::uint64_t>(row) >= row_count_)
    throw py::index_error("row " + std::to_string(row) + " is out of range for " +
                          std::to_string(row_count_) + " ids");
  const std::string_view id = id_view(static_cast<std::size_t>(row));
  PyObject* text = PyUnicode_DecodeUTF8(id.data(), static_cast<Py_ssize_t>(id.size()), "strict");
  if (text == nullptr) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(text);
}

py::list IdTable::ids_at(const py::array_t<std::int64_t>& rows) {
  Operation operation(*this);
  py::list result;
  const py::array_t<std::int64_t, py::array::c_style | py::array::forcecast> flat(rows);
  const std::int64_t* data = flat.data();
  for (py::ssize_t i = 0; i < flat.size(); ++i) result.append(id_at(data[i]));
  return result;
}

py::array_t<std::int64_t> IdTable::ranks() {
  Operation operation(*this);
  py::array_t<std::int64_t> result(static_cast<py::ssize_t>(row_count_));
  std::int64_t* out = result.mutable_data();
  {
    py::gil_scoped_release without_gil;
    // Pre-resolve the views, sort rows by id bytes (stable for duplicates), invert.
    std::vector<std::string_view> views(row_count_);
    for (std::size_t row = 0; row < row_count_; ++row) views[row] = id_view(row);
    std::vector<std::int64_t> order(row_count_);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](std::int64_t a, std::int64_t b) { return views[a] < views[b]; });
    for (std::size_t position = 0; position < row_count_; ++position)
      out[order[position]] = static_cast<std::int64_t>(position);
  }
  return result;
}

void register_id_table(py::module_& module) {
  py::class_<IdTable>(module, "IdTable",
                      "String ids kept in the caller's buffers, with a hash index to rows.")
      .def(py::init<const py::sequence&, const py::sequence&>(), py::arg("offsets"),
           py::arg("data"))
      .def_property_readonly("size", &IdTable::size)
      .def("lookup", &IdTable::lookup, py::arg("ids"), py::arg("mask") = py::none())
      .def("id_at", &IdTable::id_at, py::arg("row"))
      .def("ids_at", &IdTable::ids_at, py::arg("rows"))
      .def("ranks", &IdTable::ranks)
      .def("close", &IdTable::close)
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](IdTable& self, py::object, py::object, py::object) {
        self.close();
        return false;
      });
}

}  // namespace sealvec
