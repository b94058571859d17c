// IdTable: string ids that stay inside the caller's (locked) buffers, indexed by a hash map of
// string_views into those buffers; no copies of id bytes are made.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "py_buffer.hpp"

namespace sealvec {

class IdTable {
 public:
  IdTable(const pybind11::sequence& offsets, const pybind11::sequence& data);
  ~IdTable();

  std::size_t size() const;
  pybind11::array_t<std::int64_t> lookup(const pybind11::list& ids, const pybind11::object& mask);
  pybind11::str id_at(std::int64_t row);
  pybind11::list ids_at(const pybind11::array_t<std::int64_t>& rows);
  pybind11::array_t<std::int64_t> ranks();
  void close();

 private:
  struct Shard {
    PyBufferView offsets;
    PyBufferView data;
    std::size_t first_row;
    std::size_t row_count;
  };
  // Keeps the table open while a method runs without the GIL; close() then defers.
  class Operation;

  void ensure_open() const;
  void release_views();
  std::uint64_t offset(const Shard& shard, std::size_t index) const;
  std::string_view id_view(std::size_t row) const;

  std::vector<Shard> shards_;
  std::size_t row_count_ = 0;
  // Newest row per distinct id, and for each row the previous row with the same id (or -1).
  std::unordered_map<std::string_view, std::int64_t> newest_row_;
  std::vector<std::int64_t> previous_same_id_;
  bool closed_ = false;
  int active_operations_ = 0;  // changed only with the GIL held
};

void register_id_table(pybind11::module_& module);

}  // namespace sealvec
