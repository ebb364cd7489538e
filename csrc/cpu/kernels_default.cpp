// The kernels for any CPU (ATen's DEFAULT capability: the generic Vectorized, 8 fp32 lanes in
// plain arrays that the compiler vectorises with the baseline ISA).
#define CPU_CAPABILITY DEFAULT
#include "cpu/kernels_impl.h"

REGNET_DEFINE_ISA_KERNELS(kernels_default, "default")
