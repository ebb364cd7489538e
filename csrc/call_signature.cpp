// call_signature (see call_signature.h).
#include "call_signature.h"

#include <torch/csrc/autograd/python_variable.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace regnet_kernels {
namespace {

namespace py = pybind11;

void put(std::string& key, int64_t v) { key.append(reinterpret_cast<const char*>(&v), sizeof v); }

void put_env(std::string& key, const char* name) {
  // getenv sees os.environ's changes: CPython's os.environ calls putenv/unsetenv on each write.
  const char* value = std::getenv(name);
  if (value == nullptr) {
    put(key, -1);
    return;
  }
  const int64_t n = static_cast<int64_t>(std::strlen(value));
  put(key, n);
  key.append(value, n);
}

// What the ops' argument checks and backend choices read, packed into bytes that compare equal
// exactly when all of it does: per argument None, or a tensor's Python type, shape, strides, dtype,
// device and requires_grad; then grad mode (the triton backend refuses inputs that need grad),
// $REGNET_KERNELS_BACKEND and $TRITON_INTERPRET. None where the call must be resolved anew: an
// argument that is neither None nor a tensor (the checks name it), a tensor that is not strided or
// has symbolic sizes.
py::object call_signature(const py::args& args) {
  std::string key;
  key.reserve(64 * args.size() + 64);
  for (py::handle h : args) {
    PyObject* obj = h.ptr();
    if (obj == Py_None) {
      put(key, -1);
      continue;
    }
    if (!THPVariable_Check(obj)) return py::none();
    const at::Tensor& t = THPVariable_Unpack(obj);
    if (t.layout() != at::kStrided || t.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) return py::none();
    put(key, reinterpret_cast<intptr_t>(Py_TYPE(obj)));
    put(key, t.dim());
    for (int64_t s : t.sizes()) put(key, s);
    for (int64_t s : t.strides()) put(key, s);
    put(key, static_cast<int64_t>(t.scalar_type()));
    put(key, static_cast<int64_t>(t.device().type()));
    put(key, t.device().index());
    put(key, t.requires_grad());
  }
  put(key, at::GradMode::is_enabled());
  put_env(key, "REGNET_KERNELS_BACKEND");
  put_env(key, "TRITON_INTERPRET");
  return py::bytes(key);
}

}  // namespace

void bind_call_signature(py::module& m) {
  m.def("call_signature", &call_signature,
        "The tensor metadata, grad mode and backend environment a public op's resolve cache keys on "
        "(regnet_kernels/dispatch.py, call_key); None where the call must be resolved anew");
}

}  // namespace regnet_kernels
