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

// ---- block-quantized rows (GGUF layouts, graphir/quants.py) ----
// deq16_<type>(row, u): elements 16u .. 16u+15 of a row of blocks starting at `row`, as a
// float16 vector. Every block size (32, 256) is a whole number of such units; lane-wise float
// operations in ggml's order, so values are bit-exact with the reference dequantization.
#define F16_AT(p) vload_half(0, (__global const half *)(p))
#define BYTES16(p) vload16(0, (__global const uchar *)(p))

// Q8_0: 34-byte blocks of 32: f16 d, int8 q[32]; x = d * q
inline float16 deq16_q8_0(__global const char *row, int u) {
    __global const char *blk = row + (u / 2) * 34;
    return F16_AT(blk) * convert_float16(vload16(0, blk + 2 + 16 * (u % 2)));
}

// Q4_0: 18-byte blocks of 32: f16 d, 16 bytes of nibbles (low: elements 0..15); x = d * (q - 8)
inline float16 deq16_q4_0(__global const char *row, int u) {
    __global const char *blk = row + (u / 2) * 18;
    int16 q = convert_int16((BYTES16(blk + 2) >> (uchar)(4 * (u % 2))) & (uchar)0xF) - 8;
    return F16_AT(blk) * convert_float16(q);
}

// 6-bit scale and min of sub-block s (0..7) of a Q4_K/Q5_K block from its 12 scale bytes
inline float2 k4_scale_min(__global const uchar *sc12, int s) {
    if (s < 4) return (float2)(sc12[s] & 63, sc12[s + 4] & 63);
    return (float2)((sc12[s + 4] & 0xF) | ((sc12[s - 4] >> 6) << 4), (sc12[s + 4] >> 4) | ((sc12[s] >> 6) << 4));
}

// Q4_K (144 B, 256 elements): f16 d, f16 dmin, scales[12], qs[128]. Sub-block s of 32 takes
// the low (s even) or high nibbles of qs[32 (s/2) ..]; x = (d sc) q - (dmin m).
// Q5_K (176 B): the same with qh[32] before qs, bit s of qh[l] the 5th bit of q.
inline float16 deq16_k4(__global const char *row, int u, int bytes, int has_qh) {
    __global const uchar *blk = (__global const uchar *)(row + (u / 16) * bytes);
    int r = u % 16, s = r / 2, l0 = 16 * (r % 2);
    float2 sm = k4_scale_min(blk + 4, s);
    float d1 = F16_AT(blk) * sm.x, m1 = F16_AT(blk + 2) * sm.y;
    uchar16 q = (BYTES16(blk + (has_qh ? 48 : 16) + 32 * (s / 2) + l0) >> (uchar)(4 * (s % 2))) & (uchar)0xF;
    if (has_qh) q |= ((BYTES16(blk + 16 + l0) >> (uchar)s) & (uchar)1) << (uchar)4;
    return d1 * convert_float16(q) - m1;
}

inline float16 deq16_q4_k(__global const char *row, int u) { return deq16_k4(row, u, 144, 0); }
inline float16 deq16_q5_k(__global const char *row, int u) { return deq16_k4(row, u, 176, 1); }

// Q6_K (210 B, 256 elements): ql[128], qh[64], int8 scales[16], f16 d. Element 128h + 32k + l
// takes the low (k < 2) or high nibble of ql[64h + 32 (k % 2) + l] and bits 2k, 2k+1 of
// qh[32h + l]; x = (d scales[j / 16]) (q - 32).
inline float16 deq16_q6_k(__global const char *row, int u) {
    __global const uchar *blk = (__global const uchar *)(row + (u / 16) * 210);
    int r = u % 16, h = r / 8, k = (r % 8) / 2, l0 = 16 * (r % 2);
    float d1 = F16_AT(blk + 208) * (float)((__global const char *)blk)[192 + r];
    uchar16 lo = (BYTES16(blk + 64 * h + 32 * (k % 2) + l0) >> (uchar)(4 * (k / 2))) & (uchar)0xF;
    uchar16 hi = (BYTES16(blk + 128 + 32 * h + l0) >> (uchar)(2 * k)) & (uchar)3;
    return d1 * convert_float16(convert_int16(lo | (hi << (uchar)4)) - 32);
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
