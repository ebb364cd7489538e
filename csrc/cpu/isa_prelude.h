// Shared by kernels_avx2.cpp and kernels_avx512.cpp, in two steps:
//
// 1. Included before the target pragma (REGNET_ISA_FEATURES undefined): everything not
//    vectorised (ATen, c10, the standard library), so those inline functions keep the baseline
//    ISA and cannot leak AVX2/AVX-512 code into other translation units through the linker's
//    choice of one inline copy.
// 2. Included again after the pragma and CPU_CAPABILITY_<ISA> (REGNET_ISA_FEATURES defined):
//    GCC's target pragma enables the instructions but not the feature macros that sleef.h (the
//    vector math ATen's vec headers declare) tests, so define them, then the kernels.
#ifndef REGNET_ISA_FEATURES
#include "cpu/kernel_args.h"
#include "cpu/parallel.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>
#else
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
#if defined(CPU_CAPABILITY_AVX512)
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
#endif
#include "cpu/kernels_impl.h"
#endif
