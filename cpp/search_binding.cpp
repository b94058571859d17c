// Python entry points of the search kernel: argument validation, GIL handling, SIMD selection.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include "py_buffer.hpp"
#include "search.hpp"

namespace py = pybind11;

namespace sealvec {

namespace {

constexpr std::int64_t kMaxDim = std::int64_t{1} << 20;

Metric parse_metric(const std::string& metric) {
  if (metric == "ip") return Metric::InnerProduct;
  if (metric == "l2") return Metric::L2;
  if (metric == "cosine") return Metric::Cosine;
  throw py::value_error("metric must be 'ip', 'l2' or 'cosine', got '" + metric + "'");
}

py::object kernel_logger() {
  return py::module_::import("logging").attr("getLogger")("sealvec.kernel");
}

// Checks `queries` is a float32, 2-D, C-contiguous array with `dim` columns.
py::array validated_queries(const py::object& queries, std::int64_t dim) {
  if (!py::isinstance<py::array>(queries))
    throw py::value_error("queries must be a numpy.ndarray of float32 with shape (nq, dim), got " +
                          std::string(py::str(py::type::of(queries))));
  py::array array = py::reinterpret_borrow<py::array>(queries);
  if (!array.dtype().equal(py::dtype::of<float>()))
    throw py::value_error("queries must have dtype float32, got " +
                          std::string(py::str(array.dtype())));
  if (array.ndim() != 2)
    throw py::value_error("queries must be 2-D (nq, dim), got " + std::to_string(array.ndim()) +
                          "-D");
  if (array.shape(1) != dim)
    throw py::value_error("queries must have dim=" + std::to_string(dim) + " columns, got " +
                          std::to_string(array.shape(1)));
  if (!(array.flags() & py::array::c_style))
    throw py::value_error("queries must be C-contiguous (use numpy.ascontiguousarray)");
  return array;
}

py::tuple search(const py::sequence& segments, std::int64_t dim, const py::object& queries,
                 std::int64_t k, const std::string& metric, const py::object& mask,
                 const py::object& tiebreak, std::int64_t threads,
                 const py::object& bf16_segments, const py::object& sq_norms,
                 std::int64_t candidates, const py::object& candidate_rows) {
  // Scalar arguments first.
  if (dim <= 0 || dim > kMaxDim)
    throw py::value_error("dim must be between 1 and 2**20, got " + std::to_string(dim));
  if (k <= 0) throw py::value_error("k must be positive, got " + std::to_string(k));
  if (threads < 0) throw py::value_error("threads must be >= 0, got " + std::to_string(threads));
  SearchRequest request;
  request.metric = parse_metric(metric);
  request.dim = static_cast<std::size_t>(dim);
  request.k = static_cast<std::size_t>(k);
  request.threads = threads == 0 ? std::max(1u, std::thread::hardware_concurrency())
                                 : static_cast<std::size_t>(threads);
  py::array query_array = validated_queries(queries, dim);
  request.queries = static_cast<const float*>(query_array.data());
  request.query_count = static_cast<std::size_t>(query_array.shape(0));

  // Take a view of every segment; each must hold whole rows.
  const std::size_t row_bytes = request.dim * sizeof(float);
  std::vector<PyBufferView> views;
  views.reserve(py::len(segments));
  for (std::size_t i = 0; i < py::len(segments); ++i) {
    const std::string name = "segments[" + std::to_string(i) + "]";
    views.push_back(PyBufferView::acquire(segments[i], name));
    const PyBufferView& view = views.back();
    if (view.size() % row_bytes != 0)
      throw py::value_error(name + " has " + std::to_string(view.size()) +
                            " bytes, not a whole number of float32 rows of dim " +
                            std::to_string(dim) + " (" + std::to_string(row_bytes) +
                            " bytes each)");
    request.segments.push_back(RowSegment{reinterpret_cast<const float*>(view.data()),
                                          view.size() / row_bytes});
  }
  const std::size_t rows = total_rows(request);

  // Reduced precision: a bfloat16 copy and the squared norms of every segment's rows.
  std::vector<PyBufferView> bf16_views, norm_views;
  if (!bf16_segments.is_none() || !sq_norms.is_none()) {
    if (bf16_segments.is_none() || sq_norms.is_none())
      throw py::value_error("bf16_segments and sq_norms go together");
    const py::sequence bf16_list = py::reinterpret_borrow<py::sequence>(bf16_segments);
    const py::sequence norm_list = py::reinterpret_borrow<py::sequence>(sq_norms);
    if (py::len(bf16_list) != views.size() || py::len(norm_list) != views.size())
      throw py::value_error("bf16_segments and sq_norms need one entry per segment");
    if (candidates < 0)
      throw py::value_error("candidates must be >= 0, got " + std::to_string(candidates));
    for (std::size_t i = 0; i < views.size(); ++i) {
      const std::string index = "[" + std::to_string(i) + "]";
      bf16_views.push_back(PyBufferView::acquire(bf16_list[i], "bf16_segments" + index));
      norm_views.push_back(PyBufferView::acquire(norm_list[i], "sq_norms" + index));
      const std::size_t segment_rows = request.segments[i].row_count;
      if (bf16_views.back().size() != segment_rows * request.dim * sizeof(std::uint16_t))
        throw py::value_error("bf16_segments" + index + " must hold " +
                              std::to_string(segment_rows) + " rows of " +
                              std::to_string(dim) + " bfloat16 values");
      if (norm_views.back().size() != segment_rows * sizeof(float))
        throw py::value_error("sq_norms" + index + " must hold one float32 per row (" +
                              std::to_string(segment_rows) + ")");
      request.segments[i].bf16_rows =
          reinterpret_cast<const std::uint16_t*>(bf16_views.back().data());
      request.segments[i].sq_norms = reinterpret_cast<const float*>(norm_views.back().data());
    }
    request.precision = Precision::BFloat16;
    request.candidates = static_cast<std::size_t>(std::max<std::int64_t>(candidates, k));
  }

  // Optional per-row mask (uint8) and tiebreak (int64) must cover every row exactly.
  PyBufferView mask_view, tiebreak_view;
  if (!mask.is_none()) {
    mask_view = PyBufferView::acquire(mask, "mask");
    if (mask_view.size() != rows)
      throw py::value_error("mask must have one uint8 per row (" + std::to_string(rows) +
                            " bytes), got " + std::to_string(mask_view.size()) + " bytes");
    request.mask = mask_view.data();
  }
  if (!tiebreak.is_none()) {
    tiebreak_view = PyBufferView::acquire(tiebreak, "tiebreak");
    if (tiebreak_view.size() != rows * sizeof(std::int64_t))
      throw py::value_error("tiebreak must have one int64 per row (" +
                            std::to_string(rows * sizeof(std::int64_t)) + " bytes), got " +
                            std::to_string(tiebreak_view.size()) + " bytes");
    request.tiebreak = tiebreak_view.data();
  }

  // Rows to score exactly instead of a scan: int64 (nq, per_query), -1 for none.
  py::array_t<std::int64_t> given;
  const bool rescoring = !candidate_rows.is_none();
  if (rescoring) {
    if (request.precision != Precision::Float32)
      throw py::value_error("candidate_rows does not go with bf16_segments");
    if (!py::isinstance<py::array>(candidate_rows) ||
        !py::reinterpret_borrow<py::array>(candidate_rows).dtype().equal(
            py::dtype::of<std::int64_t>()))
      throw py::value_error("candidate_rows must be a numpy int64 array (nq, n)");
    given = py::reinterpret_borrow<py::array_t<std::int64_t>>(candidate_rows);
    if (given.ndim() != 2 || static_cast<std::size_t>(given.shape(0)) != request.query_count ||
        !(given.flags() & py::array::c_style))
      throw py::value_error("candidate_rows must be C-contiguous with one row per query");
    const std::int64_t* values = given.data();
    for (py::ssize_t i = 0; i < given.size(); ++i)
      if (values[i] >= static_cast<std::int64_t>(rows))
        throw py::value_error("candidate_rows holds row " + std::to_string(values[i]) +
                              ", past the " + std::to_string(rows) + " rows");
  }

  // Output arrays are allocated with the GIL, filled without it.
  const std::size_t kept = std::min(request.k, allowed_rows(request));
  const auto result_shape =
      std::vector<py::ssize_t>{static_cast<py::ssize_t>(request.query_count),
                               static_cast<py::ssize_t>(kept)};
  py::array_t<float> scores(result_shape);
  py::array_t<std::int64_t> result_rows(result_shape);
  float* scores_data = scores.mutable_data();
  std::int64_t* rows_data = result_rows.mutable_data();
  {
    py::gil_scoped_release without_gil;
    if (rescoring)
      rescore_rows(request, kept, given.data(), static_cast<std::size_t>(given.shape(1)),
                   scores_data, rows_data);
    else
      run_search(request, kept, scores_data, rows_data);
  }
  return py::make_tuple(scores, result_rows);
}

// Applies SEALVEC_SIMD if set, else the best level, and logs the choice.
void choose_initial_simd_level() {
  SimdLevel level = best_supported_simd_level();
  if (const char* forced = std::getenv("SEALVEC_SIMD"); forced != nullptr && *forced != '\0') {
    SimdLevel requested;
    if (!parse_simd_level(forced, &requested)) {
      kernel_logger().attr("warning")(
          "SEALVEC_SIMD=%s is not one of scalar, avx2, avx512; using %s", forced,
          simd_level_name(level));
    } else if (!simd_level_supported(requested)) {
      kernel_logger().attr("warning")("SEALVEC_SIMD=%s is not supported by this CPU; using %s",
                                      forced, simd_level_name(level));
    } else {
      level = requested;
    }
  }
  set_active_simd_level(level);
  kernel_logger().attr("info")("sealvec search kernel uses the %s variant",
                               simd_level_name(level));
}

}  // namespace

void register_search(py::module_& module) {
  choose_initial_simd_level();
  module.def("search", &search, py::arg("segments"), py::arg("dim"), py::arg("queries"),
             py::arg("k"), py::arg("metric"), py::arg("mask") = py::none(),
             py::arg("tiebreak") = py::none(), py::arg("threads") = 0,
             py::arg("bf16_segments") = py::none(), py::arg("sq_norms") = py::none(),
             py::arg("candidates") = 0, py::arg("candidate_rows") = py::none(),
             "Top-k over float32 row segments; returns (scores, rows), best first. Exact,\n"
             "or with bf16_segments and sq_norms (see to_bfloat16): `candidates` per query\n"
             "found by a bfloat16 scan, then scored exactly in float32; or with\n"
             "candidate_rows (int64, one row per query, -1 for none): only those rows,\n"
             "scored exactly, padded with row -1 and the worst score where too few.");
  module.def(
      "to_bfloat16",
      [](const py::object& rows, std::int64_t dim, const py::object& bf16_out,
         const py::object& sq_norms_out) {
        if (dim <= 0 || dim > kMaxDim)
          throw py::value_error("dim must be between 1 and 2**20, got " + std::to_string(dim));
        PyBufferView source = PyBufferView::acquire(rows, "rows");
        PyBufferView target = PyBufferView::acquire(bf16_out, "bf16_out", true);
        PyBufferView norms = PyBufferView::acquire(sq_norms_out, "sq_norms_out", true);
        const std::size_t row_bytes = static_cast<std::size_t>(dim) * sizeof(float);
        if (source.size() % row_bytes != 0)
          throw py::value_error("rows must hold whole float32 rows of dim " +
                                std::to_string(dim));
        const std::size_t count = source.size() / row_bytes;
        if (target.size() != count * static_cast<std::size_t>(dim) * sizeof(std::uint16_t) ||
            norms.size() != count * sizeof(float))
          throw py::value_error("bf16_out must hold rows x dim uint16 and sq_norms_out rows "
                                "float32");
        py::gil_scoped_release without_gil;
        convert_to_bf16(reinterpret_cast<const float*>(source.data()), count,
                        static_cast<std::size_t>(dim),
                        reinterpret_cast<std::uint16_t*>(target.mutable_data()),
                        reinterpret_cast<float*>(norms.mutable_data()));
      },
      py::arg("rows"), py::arg("dim"), py::arg("bf16_out"), py::arg("sq_norms_out"),
      "Write bfloat16 copies (round to nearest even) and squared norms of float32 rows.");
  module.def("bf16_dot", [] { return std::string(bf16_dot_name()); },
             "What the bfloat16 scan runs on: 'avx512_bf16' (native dot products), or the\n"
             "active SIMD level widening to float32.");
  module.def("set_bf16_native_dot", &set_bf16_native_dot, py::arg("allowed"),
             "Allow (default) or forbid native bfloat16 dot products (for tests).");
  module.def("simd_level", [] { return std::string(simd_level_name(active_simd_level())); },
             "The active SIMD variant: 'scalar', 'avx2' or 'avx512'.");
  module.def(
      "supported_simd_levels",
      [] {
        std::vector<std::string> names;
        for (SimdLevel level : supported_simd_levels()) names.push_back(simd_level_name(level));
        return names;
      },
      "SIMD variants this CPU can run, ascending.");
  module.def(
      "set_simd_level",
      [](const std::string& name) {
        SimdLevel level;
        if (!parse_simd_level(name, &level))
          throw py::value_error("level must be 'scalar', 'avx2' or 'avx512', got '" + name + "'");
        if (!simd_level_supported(level))
          throw py::value_error("SIMD level '" + name + "' is not supported by this CPU");
        set_active_simd_level(level);
      },
      py::arg("level"), "Force a SIMD variant (ValueError if unknown or unsupported).");
}

}  // namespace sealvec
