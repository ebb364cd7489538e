// The kernels compiled for AVX2 + FMA (selected at run time by selected_kernels(), ops_cpu.cpp).
#include "cpu/isa_prelude.h"  // the non-vector headers, before the pragma (see there)

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#define REGNET_ISA_FEATURES
#include "cpu/isa_prelude.h"  // feature macros, then kernels_impl.h

REGNET_DEFINE_ISA_KERNELS(kernels_avx2, "avx2")
#pragma GCC pop_options
#endif
