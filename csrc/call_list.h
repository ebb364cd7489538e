// CallList: dispatcher op calls recorded from a Python forward (regnet_kernels/replay.py) and
// replayed from C++, so a settled batch-1 forward pays no Python between its ops.
#pragma once
#include <torch/extension.h>

namespace regnet_kernels {
void bind_call_list(pybind11::module& m);
}  // namespace regnet_kernels
