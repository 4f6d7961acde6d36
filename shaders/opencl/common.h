// Shared plumbing of every graphir OpenCL kernel (OpenCL C 1.2).
//
// A tensor argument is four kernel arguments: its buffer, the byte offset of its origin,
// ne (elements per dim) and nb (bytes per dim step), so any view (permuted, strided,
// offset) is read in place. Element types are chosen per program with -D defines
// (F32, F16, BF16, I32); F16 is converted with vload_half/vstore_half (no half arithmetic).
#ifndef GRAPHIR_COMMON_H
#define GRAPHIR_COMMON_H

// no fused multiply-add: results match the float32 reference operation by operation
#pragma OPENCL FP_CONTRACT OFF

#define TENSOR(T) __global char *T##_d, ulong T##_o, int4 T##_ne, ulong4 T##_nb

// byte address of element (i0, i1, i2, i3) of T
#define AT(T, i0, i1, i2, i3) \
    (T##_d + T##_o + (ulong)(i0) * T##_nb.s0 + (ulong)(i1) * T##_nb.s1 + (ulong)(i2) * T##_nb.s2 + (ulong)(i3) * T##_nb.s3)

#define NELEM(T) ((ulong)T##_ne.s0 * T##_ne.s1 * T##_ne.s2 * T##_ne.s3)

// flat logical index -> (i0, i1, i2, i3) of T (32-bit arithmetic: tensors below 2^32 elements)
#define UNRAVEL(T, idx, i0, i1, i2, i3) \
    uint T##_r0_ = (uint)(idx), T##_q0_ = T##_r0_ / (uint)T##_ne.s0; \
    uint T##_q1_ = T##_q0_ / (uint)T##_ne.s1, T##_q2_ = T##_q1_ / (uint)T##_ne.s2; \
    int i0 = (int)(T##_r0_ - T##_q0_ * (uint)T##_ne.s0); \
    int i1 = (int)(T##_q0_ - T##_q1_ * (uint)T##_ne.s1); \
    int i2 = (int)(T##_q1_ - T##_q2_ * (uint)T##_ne.s2); \
    int i3 = (int)T##_q2_

// ---- typed loads and stores (float values) ----
#define LD_F32(p) (*(__global const float *)(p))
#define LD_F16(p) vload_half(0, (__global const half *)(p))
#define LD_BF16(p) as_float(((uint)*(__global const ushort *)(p)) << 16)
#define LD_I32(p) ((float)*(__global const int *)(p))

#define ST_F32(p, v) (*(__global float *)(p) = (v))
#define ST_F16(p, v) vstore_half_rte((v), 0, (__global half *)(p))
#define ST_BF16(p, v) (*(__global ushort *)(p) = f32_to_bf16(v))

// round to nearest even, NaN kept quiet (as ggml_compute_fp32_to_bf16)
inline ushort f32_to_bf16(float v) {
    uint u = as_uint(v);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (ushort)((u >> 16) | 64);
    return (ushort)((u + (0x7FFFu + ((u >> 16) & 1u))) >> 16);
}

// ---- block-quantized rows: element k of a row starting at `row` (GGUF layouts) ----
// Q8_0: 34-byte blocks of 32: f16 d, int8 q[32]; x = d * q
inline float deq_q8_0(__global const char *row, int k) {
    __global const char *blk = row + (k / 32) * 34;
    return vload_half(0, (__global const half *)blk) * (float)blk[2 + k % 32];
}

// Q4_0: 18-byte blocks of 32: f16 d, 16 bytes of nibbles (low nibbles: elements 0..15); x = d * (q - 8)
inline float deq_q4_0(__global const char *row, int k) {
    __global const uchar *blk = (__global const uchar *)(row + (k / 32) * 18);
    int j = k % 32;
    uchar b = blk[2 + j % 16];
    int q = j < 16 ? (b & 0xF) : (b >> 4);
    return vload_half(0, (__global const half *)blk) * (float)(q - 8);
}

#define LD_(T, p) LD_##T(p)
#define LD(T, p) LD_(T, p)
#define ST_(T, p, v) ST_##T(p, v)
#define ST(T, p, v) ST_(T, p, v)

// ---- work-group row reductions (WG work-items, a power of two; double as ggml_float) ----
#pragma OPENCL EXTENSION cl_khr_fp64 : enable
#ifndef WG
#define WG 64
#endif

inline double wg_sum(double v, __local double *tmp) {
    int l = get_local_id(0);
    tmp[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (l < s) tmp[l] += tmp[l + s];
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    double r = tmp[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

inline float wg_max(float v, __local float *tmp) {
    int l = get_local_id(0);
    tmp[l] = v;
    barrier(CLK_LOCAL_MEM_FENCE);
    for (int s = WG / 2; s > 0; s >>= 1) {
        if (l < s) tmp[l] = fmax(tmp[l], tmp[l + s]);
        barrier(CLK_LOCAL_MEM_FENCE);
    }
    float r = tmp[0];
    barrier(CLK_LOCAL_MEM_FENCE);
    return r;
}

#endif
