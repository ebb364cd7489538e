// The kernels compiled for AVX-512 (selected at run time by selected_kernels(), ops_cpu.cpp).
// Everything not vectorised (ATen, c10, the standard library) is included *before* the target
// pragma so that those inline functions keep the baseline ISA and cannot leak AVX-512 code
// into other translation units through the linker's choice of one inline copy.
#include "cpu/kernel_args.h"
#include "cpu/parallel.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__x86_64__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,bmi,bmi2,f16c")
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
#ifndef __AVX512F__
#define __AVX512F__ 1
#endif
#ifndef __AVX512BW__
#define __AVX512BW__ 1
#endif
#ifndef __AVX512VL__
#define __AVX512VL__ 1
#endif
#ifndef __AVX512DQ__
#define __AVX512DQ__ 1
#endif
#define CPU_CAPABILITY AVX512
#define CPU_CAPABILITY_AVX512
#include "cpu/kernels_impl.h"

REGNET_DEFINE_ISA_KERNELS(kernels_avx512, "avx512")
#pragma GCC pop_options
#endif
