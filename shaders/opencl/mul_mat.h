// Row units shared by mul_mat.cl and mul_mat_tiled.cl: A16(row, u) / LD16(T, row, u) give
// elements 16u .. 16u+15 of a row as a float16.
#ifndef GRAPHIR_MUL_MAT_H
#define GRAPHIR_MUL_MAT_H
#include "common.h"

// 16 consecutive floats of a contiguous F32 / F16 row, unit u
#define LD16_F32(p, u) vload16((u), (__global const float *)(p))
#define LD16_F16(p, u) vload_half16((u), (__global const half *)(p))
#define LD16_(T, p, u) LD16_##T(p, u)
#define LD16(T, p, u) LD16_(T, p, u)

// 16 elements of a's row: dequantized, or vector loads of a contiguous F32/F16 row
#if defined(DEQ)
#define A16(row, u) DEQ(row, u)
#elif defined(A_CONTIG)
#define A16(row, u) LD16(TA, row, u)
#endif

#endif
