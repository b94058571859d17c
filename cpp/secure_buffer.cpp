#include "secure_buffer.hpp"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cerrno>
#include <cstring>
#include <new>
#include <stdexcept>
#include <string>

namespace py = pybind11;

namespace sealvec {

namespace {

std::atomic<std::uint64_t> g_locked_bytes{0};

// Sizes above this are refused as absurd (128 TiB, well beyond any address space in use).
constexpr std::uint64_t kMaxBufferBytes = std::uint64_t{1} << 47;

// Marks a Py_buffer handed out writable, so release_buffer can decrement the right counter.
void* const kWritableExport = reinterpret_cast<void*>(static_cast<std::uintptr_t>(1));

// Backing for empty buffers: consumers get a valid, never-written pointer.
unsigned char g_empty_byte = 0;

void wipe_bytes(unsigned char* data, std::size_t size) {
#if defined(__GLIBC__) && ((__GLIBC__ > 2) || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
  explicit_bzero(data, size);
#else
  volatile unsigned char* bytes = data;
  for (std::size_t i = 0; i < size; ++i) bytes[i] = 0;
#endif
}

std::string limit_text(rlim_t value) {
  return value == RLIM_INFINITY ? std::string("unlimited") : std::to_string(value) + " bytes";
}

// The numbers a reader needs to fix a failed mlock; contains no buffer contents.
std::string lock_failure_details(std::size_t tried_bytes, int error_number) {
  struct rlimit limit {};
  std::string limits = "unknown";
  if (getrlimit(RLIMIT_MEMLOCK, &limit) == 0)
    limits = "soft " + limit_text(limit.rlim_cur) + ", hard " + limit_text(limit.rlim_max);
  return "could not lock " + std::to_string(tried_bytes) + " bytes of memory (mlock: " +
         std::strerror(error_number) + "); RLIMIT_MEMLOCK is " + limits +
         "; this process already locks " + std::to_string(g_locked_bytes.load()) +
         " bytes via SecureBuffers";
}

// Locks [data, data + size). With `on_fault` the pages are locked as they are first
// touched instead of all at once here (mlock2 MLOCK_ONFAULT, Linux >= 4.4); the limit is
// checked for the whole range either way. Falls back to a plain mlock where unsupported.
int lock_pages(void* data, std::size_t size, bool on_fault) {
#if defined(SYS_mlock2) && defined(MLOCK_ONFAULT)
  if (on_fault) {
    if (syscall(SYS_mlock2, data, size, MLOCK_ONFAULT) == 0) return 0;
    if (errno != EINVAL && errno != ENOSYS) return -1;
  }
#else
  (void)on_fault;
#endif
  return mlock(data, size);
}

}  // namespace

constexpr std::size_t kHugePageBytes = std::size_t{2} << 20;
constexpr std::size_t kHugePageThreshold = std::size_t{4} << 20;

std::uint64_t locked_bytes() { return g_locked_bytes.load(); }

// Runs without the GIL (see the binding): no Python calls here. A refused lock under
// MemoryLockPolicy::Required throws LockRefused; under BestEffort the reason is kept in
// unlocked_reason_ for the binding to log.
SecureBuffer::SecureBuffer(std::size_t nbytes, MemoryLockPolicy policy) : nbytes_(nbytes) {
  if (nbytes == 0) {
    wiped_ = true;  // nothing mapped, nothing to wipe
    return;
  }
  // Layout: guard page | data pages | guard page, all private and anonymous. Large
  // buffers start on a 2 MiB boundary and span whole 2 MiB units so the kernel can
  // back them with transparent huge pages: populating locked memory then takes 512
  // times fewer page faults. The alignment slack stays PROT_NONE, like the guards.
  page_bytes_ = static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
  const bool huge = nbytes >= kHugePageThreshold;
  const std::size_t unit = huge ? kHugePageBytes : page_bytes_;
  data_bytes_ = (nbytes + unit - 1) / unit * unit;
  mapping_bytes_ = data_bytes_ + 2 * page_bytes_ + (huge ? kHugePageBytes : 0);
  void* mapping = mmap(nullptr, mapping_bytes_, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mapping == MAP_FAILED) throw std::bad_alloc();
  mapping_ = static_cast<unsigned char*>(mapping);
  const auto first = reinterpret_cast<std::uintptr_t>(mapping_) + page_bytes_;
  data_ = reinterpret_cast<unsigned char*>((first + unit - 1) / unit * unit);
  const std::size_t mapping_bytes = mapping_bytes_;

  // Undo the mapping if any later step throws.
  auto fail = [&](const std::string& message) {
    munmap(mapping_, mapping_bytes);
    mapping_ = data_ = nullptr;
    wiped_ = true;
    throw std::runtime_error(message);
  };

  // Data pages become readable/writable; the guard pages stay PROT_NONE.
  if (mprotect(data_, data_bytes_, PROT_READ | PROT_WRITE) != 0)
    fail(std::string("SecureBuffer: mprotect failed: ") + std::strerror(errno));

#if defined(MADV_HUGEPAGE)
  if (huge) madvise(data_, data_bytes_, MADV_HUGEPAGE);  // a hint: failure only costs speed
#endif

  // Keep the data out of core dumps; without this the buffer would not be safe to use.
#if defined(MADV_DONTDUMP)
  if (madvise(data_, data_bytes_, MADV_DONTDUMP) != 0)
    fail(std::string("SecureBuffer: madvise(MADV_DONTDUMP) failed: ") + std::strerror(errno));
#endif

  // Children created by fork() see zeros here (Linux >= 4.14); older kernels say EINVAL.
#if defined(MADV_WIPEONFORK)
  if (madvise(data_, data_bytes_, MADV_WIPEONFORK) == 0) {
    wipe_on_fork_ = true;
  } else if (errno != EINVAL) {
    fail(std::string("SecureBuffer: madvise(MADV_WIPEONFORK) failed: ") + std::strerror(errno));
  }
#endif

  // Pin the data pages in RAM so they never reach swap. Large buffers are locked on
  // fault: the kernel then zeroes and pins each huge page in whichever thread first
  // writes it (decryption workers, in parallel, while the data is hot in cache) rather
  // than all of them here, one after another. A page is locked from the moment it
  // exists, so nothing written to it can reach swap either way.
  if (lock_pages(data_, data_bytes_, huge) == 0) {
    locked_ = true;
    g_locked_bytes += data_bytes_;
    return;
  }
  const int lock_errno = errno;
  std::string details = lock_failure_details(data_bytes_, lock_errno);
  if (policy == MemoryLockPolicy::Required) {
    munmap(mapping_, mapping_bytes);
    mapping_ = data_ = nullptr;
    wiped_ = true;
    throw LockRefused(
        details +
        ". Fix: raise the limit (ulimit -l, LimitMEMLOCK= in systemd, --ulimit memlock=-1 for "
        "docker) or grant CAP_IPC_LOCK, or pass memory_lock='best_effort' to continue without "
        "locking");
  }
  unlocked_reason_ = std::move(details);
}

SecureBuffer::~SecureBuffer() { wipe_and_unmap(); }

void SecureBuffer::seal() {
  if (released_) throw py::value_error("SecureBuffer was released");
  if (sealed_) return;
  if (writable_exports_ > 0)
    throw py::buffer_error("cannot seal SecureBuffer: " + std::to_string(writable_exports_) +
                           " writable view(s) are still exported; drop them first");
  // Hardware-enforced read-only from here on.
  if (data_ != nullptr && mprotect(data_, data_bytes_, PROT_READ) != 0)
    throw std::runtime_error(std::string("SecureBuffer: mprotect failed: ") +
                             std::strerror(errno));
  sealed_ = true;
}

void SecureBuffer::release() {
  released_ = true;
  // With views still exported the wipe is deferred to the last release_buffer().
  if (exports_ == 0) wipe_and_unmap();
}

void SecureBuffer::wipe_and_unmap() noexcept {
  if (wiped_) return;
  wiped_ = true;
  // Make the pages writable again if sealed, zero them, then unlock and unmap.
  const bool writable = !sealed_ || mprotect(data_, data_bytes_, PROT_READ | PROT_WRITE) == 0;
  if (writable) wipe_bytes(data_, data_bytes_);
  if (locked_) {
    munlock(data_, data_bytes_);
    g_locked_bytes -= data_bytes_;
  }
  munmap(mapping_, mapping_bytes_);
  mapping_ = data_ = nullptr;
}

int SecureBuffer::get_buffer(PyObject* owner, Py_buffer* view, int flags) {
  if (view == nullptr) {
    PyErr_SetString(PyExc_BufferError, "SecureBuffer: NULL view in getbuffer");
    return -1;
  }
  if (released_) {
    PyErr_SetString(PyExc_ValueError, "SecureBuffer was released");
    return -1;
  }
  if ((flags & PyBUF_WRITABLE) && sealed_) {
    PyErr_SetString(PyExc_BufferError, "SecureBuffer is sealed (read-only)");
    return -1;
  }
  // A 1-D unsigned-byte buffer; every view of an unsealed buffer is writable.
  void* data = data_ != nullptr ? static_cast<void*>(data_) : &g_empty_byte;
  if (PyBuffer_FillInfo(view, owner, data, static_cast<Py_ssize_t>(nbytes_), sealed_ ? 1 : 0,
                        flags) != 0)
    return -1;
  view->internal = sealed_ ? nullptr : kWritableExport;
  ++exports_;
  if (!sealed_) ++writable_exports_;
  return 0;
}

void SecureBuffer::release_buffer(Py_buffer* view) {
  if (exports_ > 0) --exports_;
  if (view->internal == kWritableExport && writable_exports_ > 0) --writable_exports_;
  if (released_ && exports_ == 0) wipe_and_unmap();
}

// ---- Python type ----------------------------------------------------------------------------

namespace {

SecureBuffer* instance_of(PyObject* object) {
  try {
    return py::handle(object).cast<SecureBuffer*>();
  } catch (...) {
    return nullptr;
  }
}

int secure_buffer_getbuffer(PyObject* object, Py_buffer* view, int flags) {
  SecureBuffer* buffer = instance_of(object);
  if (buffer == nullptr) {
    PyErr_SetString(PyExc_BufferError, "SecureBuffer is not initialised");
    return -1;
  }
  return buffer->get_buffer(object, view, flags);
}

void secure_buffer_releasebuffer(PyObject* object, Py_buffer* view) {
  if (SecureBuffer* buffer = instance_of(object)) buffer->release_buffer(view);
}

}  // namespace

MemoryLockPolicy parse_memory_lock(const std::string& memory_lock) {
  if (memory_lock == "required") return MemoryLockPolicy::Required;
  if (memory_lock == "best_effort") return MemoryLockPolicy::BestEffort;
  throw py::value_error("memory_lock must be 'required' or 'best_effort', got '" + memory_lock +
                        "'");
}

// Allocates without the GIL, so buffers for several shards can be mapped and locked
// in parallel threads; raises MemoryLockError or logs the best-effort warning with it.
std::unique_ptr<SecureBuffer> make_secure_buffer(std::size_t nbytes, MemoryLockPolicy policy) {
  std::unique_ptr<SecureBuffer> buffer;
  std::string refusal;
  {
    py::gil_scoped_release without_gil;
    try {
      buffer = std::make_unique<SecureBuffer>(nbytes, policy);
    } catch (const LockRefused& error) {
      refusal = error.what();
    }
  }
  if (!buffer) {
    py::object error_class = py::module_::import("sealvec.errors").attr("MemoryLockError");
    PyErr_SetString(error_class.ptr(), refusal.c_str());
    throw py::error_already_set();
  }
  if (!buffer->unlocked_reason().empty()) {
    // Warn once per process; later unlocked buffers are counted at DEBUG only.
    static std::atomic<bool> warned{false};
    py::object logger = py::module_::import("logging").attr("getLogger")("sealvec.memory");
    if (!warned.exchange(true)) {
      logger.attr("warning")(
          "continuing without locked memory (pages may be swapped; further unlocked buffers "
          "are not reported again): %s",
          buffer->unlocked_reason());
    } else {
      logger.attr("debug")("SecureBuffer continues without locked memory: %s",
                           buffer->unlocked_reason());
    }
  }
  return buffer;
}

void register_secure_buffer(py::module_& module) {
  py::class_<SecureBuffer> cls(module, "SecureBuffer", py::buffer_protocol(),
                               "Bytes in locked, non-dumpable, guard-paged memory.");
  cls.def(py::init([](std::int64_t nbytes, const std::string& memory_lock) {
            if (nbytes < 0 || static_cast<std::uint64_t>(nbytes) > kMaxBufferBytes)
              throw py::value_error("nbytes must be between 0 and 2**47, got " +
                                    std::to_string(nbytes));
            return make_secure_buffer(static_cast<std::size_t>(nbytes),
                                      parse_memory_lock(memory_lock));
          }),
          py::arg("nbytes"), py::arg("memory_lock") = "required")
      .def("seal", &SecureBuffer::seal, "Make the bytes read-only (mprotect). Idempotent.")
      .def("release", &SecureBuffer::release,
           "Wipe and unmap now, or when the last exported view is dropped. Idempotent.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__",
           [](SecureBuffer& self, py::object, py::object, py::object) {
             self.release();
             return false;
           })
      .def_property_readonly("nbytes", &SecureBuffer::nbytes)
      .def_property_readonly("locked", &SecureBuffer::locked)
      .def_property_readonly("sealed", &SecureBuffer::sealed)
      .def_property_readonly("released", &SecureBuffer::released)
      .def_property_readonly("exports", &SecureBuffer::exports)
      .def_property_readonly("wipe_on_fork", &SecureBuffer::wipe_on_fork)
      .def("__repr__", [](const SecureBuffer& self) {
        return "SecureBuffer(nbytes=" + std::to_string(self.nbytes()) +
               ", locked=" + (self.locked() ? "True" : "False") +
               ", sealed=" + (self.sealed() ? "True" : "False") +
               ", released=" + (self.released() ? "True" : "False") + ")";
      });

  // Replace pybind11's buffer slots with ours so every export is counted.
  auto* type = reinterpret_cast<PyTypeObject*>(cls.ptr());
  type->tp_as_buffer->bf_getbuffer = &secure_buffer_getbuffer;
  type->tp_as_buffer->bf_releasebuffer = &secure_buffer_releasebuffer;

  module.def("locked_bytes", &locked_bytes,
             "Bytes currently mlocked by live SecureBuffers (whole pages).");
}

}  // namespace sealvec
