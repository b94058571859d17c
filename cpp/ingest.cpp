// Helpers for sealing new records: checking vectors in one pass, packing strings straight
// into locked memory, and starting the writeback of a file while it is still being written.
#include <fcntl.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "secure_buffer.hpp"

namespace py = pybind11;

namespace sealvec {

namespace {

// Magnitude bounds for stored and query vectors. Below 2^54 per value, a row's squared
// norm stays under 2^124 at the largest dimension (2^16), so no inner product, squared
// distance or norm overflows float32 (whose largest value is just under 2^128). Under
// cosine a row needs a value of at least 2^-60, so its squared norm (>= 2^-120) is a
// normal float32 and the row has a direction.
constexpr std::uint32_t kHugeExponent = 127 + 54;
constexpr std::uint32_t kWeakExponent = 127 - 60;

// First rows in [begin, end) of a row-major float32 matrix, each -1 if there is none.
struct RowScan {
  std::int64_t nonfinite = -1;  // holds NaN or infinity
  std::int64_t huge = -1;       // holds a finite value of magnitude >= 2^54
  std::int64_t weak = -1;       // every value below 2^-60 in magnitude (zeros included)
};

RowScan scan_rows(const std::uint32_t* bits, std::size_t dim, std::size_t begin,
                  std::size_t end) {
  RowScan found;
  for (std::size_t row = begin; row < end; ++row) {
    const std::uint32_t* values = bits + row * dim;
    // Adding (256 - E) << 23 to a value's exponent bits carries into bit 31 exactly when
    // its exponent is at least E; plain and/add/or, so the loop vectorizes on any x86-64.
    std::uint32_t nonfinite = 0, huge = 0, strong = 0;
    for (std::size_t j = 0; j < dim; ++j) {
      const std::uint32_t exponent = values[j] & 0x7F800000u;
      nonfinite |= exponent + ((256u - 255u) << 23);
      huge |= exponent + ((256u - kHugeExponent) << 23);
      strong |= exponent + ((256u - kWeakExponent) << 23);
    }
    const auto index = static_cast<std::int64_t>(row);
    if ((nonfinite & 0x80000000u) && found.nonfinite < 0) found.nonfinite = index;
    if ((huge & 0x80000000u) && !(nonfinite & 0x80000000u) && found.huge < 0)
      found.huge = index;
    if (!(strong & 0x80000000u) && found.weak < 0) found.weak = index;
    if (found.nonfinite >= 0 && found.huge >= 0 && found.weak >= 0) break;
  }
  return found;
}

std::int64_t first_of(std::int64_t a, std::int64_t b) { return a >= 0 ? a : b; }

constexpr std::size_t kParallelScanBytes = std::size_t{16} << 20;

}  // namespace

void register_ingest(py::module_& module) {
  module.def(
      "scan_rows",
      [](const py::array_t<float, py::array::c_style>& vectors) {
        if (vectors.ndim() != 2) throw py::value_error("vectors must be 2-D");
        const std::size_t rows = static_cast<std::size_t>(vectors.shape(0));
        const std::size_t dim = static_cast<std::size_t>(vectors.shape(1));
        const auto* bits = reinterpret_cast<const std::uint32_t*>(vectors.data());
        RowScan first, second;
        {
          py::gil_scoped_release without_gil;
          // Large batches in two halves on two threads: the scan is bound by memory reads.
          const std::size_t middle =
              rows * dim * sizeof(float) >= kParallelScanBytes ? rows / 2 : rows;
          std::thread helper;
          if (middle < rows) {
            try {
              helper = std::thread([&] { second = scan_rows(bits, dim, middle, rows); });
            } catch (const std::system_error&) {
              second = scan_rows(bits, dim, middle, rows);
            }
          }
          first = scan_rows(bits, dim, 0, middle);
          if (helper.joinable()) helper.join();
        }
        return py::make_tuple(first_of(first.nonfinite, second.nonfinite),
                              first_of(first.huge, second.huge),
                              first_of(first.weak, second.weak));
      },
      py::arg("vectors"),
      "First rows of a C-contiguous float32 matrix (each -1 if none): (holding NaN or "
      "infinity, holding a finite value of magnitude >= 2**54, with every value below "
      "2**-60 in magnitude, zeros included).");

  module.def(
      "pack_strings",
      [](const py::sequence& values, const std::string& memory_lock) {
        const MemoryLockPolicy policy = parse_memory_lock(memory_lock);
        // A tuple of its own references: changes to `values` while the buffer is allocated
        // (without the GIL) cannot free or replace what is being packed.
        const py::tuple items = py::reinterpret_steal<py::tuple>(PySequence_Tuple(values.ptr()));
        if (!items) throw py::error_already_set();
        const std::size_t count = items.size();
        std::vector<std::pair<const char*, std::size_t>> parts(count);
        std::uint64_t total = 0;
        for (std::size_t i = 0; i < count; ++i) {
          PyObject* value = PyTuple_GET_ITEM(items.ptr(), i);
          Py_ssize_t length = 0;
          const char* bytes = nullptr;
          if (PyUnicode_Check(value)) {
            bytes = PyUnicode_AsUTF8AndSize(value, &length);  // strict: no lone surrogates
            if (bytes == nullptr) throw py::error_already_set();
          } else if (PyBytes_Check(value)) {
            bytes = PyBytes_AS_STRING(value);
            length = PyBytes_GET_SIZE(value);
          } else {
            throw py::value_error("values[" + std::to_string(i) +
                                  "] must be str or bytes, got " +
                                  std::string(py::str(py::type::of(py::handle(value)))));
          }
          parts[i] = {bytes, static_cast<std::size_t>(length)};
          total += static_cast<std::uint64_t>(length);
        }
        const std::size_t table_bytes = 8 * (count + 1);
        std::unique_ptr<SecureBuffer> buffer = make_secure_buffer(table_bytes + total, policy);
        if (unsigned char* out = buffer->data()) {
          std::uint64_t offset = 0;
          unsigned char* cursor = out + table_bytes;
          for (std::size_t i = 0; i <= count; ++i) {
            for (int b = 0; b < 8; ++b)
              out[8 * i + b] = static_cast<unsigned char>(offset >> (8 * b));
            if (i == count) break;
            std::memcpy(cursor, parts[i].first, parts[i].second);
            cursor += parts[i].second;
            offset += parts[i].second;
          }
        }
        buffer->seal();
        return buffer;
      },
      py::arg("values"), py::arg("memory_lock") = "required",
      "A sealed SecureBuffer holding len(values) + 1 little-endian uint64 offsets, then the "
      "values back to back (str as strict UTF-8, bytes as they are).");

  module.def(
      "start_writeback",
      [](int fd, std::int64_t offset, std::int64_t nbytes) {
#if defined(__linux__) && defined(SYNC_FILE_RANGE_WRITE)
        int result;
        {
          py::gil_scoped_release without_gil;
          result = sync_file_range(fd, offset, nbytes, SYNC_FILE_RANGE_WRITE);
        }
        return result == 0;
#else
        (void)fd;
        (void)offset;
        (void)nbytes;
        return false;
#endif
      },
      py::arg("fd"), py::arg("offset"), py::arg("nbytes"),
      "Ask the kernel to start writing a written range of a file to storage now (Linux "
      "sync_file_range); only a hint, durability still needs fsync. False if unsupported.");
}

}  // namespace sealvec
