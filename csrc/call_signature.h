// call_signature: the tensor part of the public ops' resolve-cache key (regnet_kernels/dispatch.py,
// call_key), made in C++ because the same key built in Python costs ~0.35 us per tensor.
#pragma once
#include <torch/extension.h>

namespace regnet_kernels {
void bind_call_signature(pybind11::module& m);
}  // namespace regnet_kernels
