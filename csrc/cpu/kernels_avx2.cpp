// The kernels compiled for AVX2 + FMA (selected at run time by selected_kernels(), ops_cpu.cpp).
// See kernels_avx512.cpp for why the other headers come before the target pragma.
#include "cpu/kernel_args.h"
#include "cpu/parallel.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi,bmi2,f16c")
// GCC's target pragma enables the instructions but not the feature macros that sleef.h (the
// vector math ATen's vec headers declare) tests, so set them for the rest of this file.
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#ifndef __BMI__
#define __BMI__ 1
#endif
#ifndef __BMI2__
#define __BMI2__ 1
#endif
#define CPU_CAPABILITY AVX2
#define CPU_CAPABILITY_AVX2
#include "cpu/kernels_impl.h"

REGNET_DEFINE_ISA_KERNELS(kernels_avx2, "avx2")
#pragma GCC pop_options
#endif
