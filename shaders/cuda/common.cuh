// Shared plumbing of every graphir CUDA kernel.
//
// A tensor argument is one Tensor record passed by value: the device address of its origin,
// nb (bytes per dim step), ne (elements per dim) and its element type (graphir DType codes),
// so any view (permuted, strided, offset) is read in place. The host packs the same record
// (backends/cuda/kernels.py TENSOR); tests/backends/test_cuda.py checks the two agree.
// Kernels are compiled with -fmad=false: results match the float32 reference operation by
// operation; the dot-product loops ask for fused multiply-adds explicitly (fmaf).
#pragma once
#include <cuda_fp16.h>
#include <stdint.h>

struct Tensor {
    char *data;
    long long nb[4];
    int ne[4];
    int type;
    int pad_;
};
static_assert(sizeof(Tensor) == 64, "Tensor record: 64 bytes (kernels.py TENSOR)");

// graphir DType codes (graphir/types.py)
enum : int { T_F32 = 0, T_F16 = 1, T_Q4_0 = 2, T_Q8_0 = 8, T_Q4_K = 12, T_Q5_K = 13, T_Q6_K = 14,
             T_I32 = 26, T_BF16 = 30 };

#define WARP 32

__device__ __forceinline__ char *at(const Tensor &t, int i0, int i1, int i2, int i3) {
    return t.data + i0 * t.nb[0] + i1 * t.nb[1] + i2 * t.nb[2] + i3 * t.nb[3];
}

__device__ __forceinline__ long long nelem(const Tensor &t) {
    return (long long)t.ne[0] * t.ne[1] * t.ne[2] * t.ne[3];
}

// flat logical index -> (i0, i1, i2, i3) of t (32-bit divisions below 2^32, 64-bit past it)
__device__ __forceinline__ void unravel(const Tensor &t, long long idx, int &i0, int &i1, int &i2, int &i3) {
    if (idx <= 0xFFFFFFFFLL) {
        unsigned r = (unsigned)idx, q0 = r / (unsigned)t.ne[0], q1 = q0 / (unsigned)t.ne[1], q2 = q1 / (unsigned)t.ne[2];
        i0 = (int)(r - q0 * (unsigned)t.ne[0]);
        i1 = (int)(q0 - q1 * (unsigned)t.ne[1]);
        i2 = (int)(q1 - q2 * (unsigned)t.ne[2]);
        i3 = (int)q2;
        return;
    }
    i0 = (int)(idx % t.ne[0]);
    idx /= t.ne[0];
    i1 = (int)(idx % t.ne[1]);
    idx /= t.ne[1];
    i2 = (int)(idx % t.ne[2]);
    i3 = (int)(idx / t.ne[2]);
}

__device__ __forceinline__ long long global_id() { return (long long)blockIdx.x * blockDim.x + threadIdx.x; }

// ---- typed loads and stores (float values) ----
__device__ __forceinline__ float f16_at(const char *p) { return __half2float(*(const __half *)p); }
__device__ __forceinline__ float bf16_to_f32(uint16_t v) { return __uint_as_float((uint32_t)v << 16); }

// round to nearest even, NaN kept quiet (as ggml_compute_fp32_to_bf16)
__device__ __forceinline__ uint16_t f32_to_bf16(float v) {
    uint32_t u = __float_as_uint(v);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + (0x7FFFu + ((u >> 16) & 1u))) >> 16);
}

// an element of a float-convertible type (F32, F16, BF16, I32); the type is uniform per launch
__device__ __forceinline__ float ld(int type, const char *p) {
    switch (type) {
    case T_F16: return f16_at(p);
    case T_BF16: return bf16_to_f32(*(const uint16_t *)p);
    case T_I32: return (float)*(const int *)p;
    default: return *(const float *)p;
    }
}

__device__ __forceinline__ void st(int type, char *p, float v) {
    switch (type) {
    case T_F16: *(__half *)p = __float2half_rn(v); break;
    case T_BF16: *(uint16_t *)p = f32_to_bf16(v); break;
    case T_I32: *(int *)p = (int)v; break;
    default: *(float *)p = v;
    }
}

__device__ __forceinline__ float ldf(const char *p) { return *(const float *)p; }
__device__ __forceinline__ void stf(char *p, float v) { *(float *)p = v; }

// ---- block-quantized rows (GGUF layouts, graphir/quants.py) ----
// deq16<TYPE>(row, u, x): elements 16u .. 16u+15 of a row of blocks starting at `row`. Every
// block size (32, 256) is a whole number of such units; the products are rounded as ggml's
// reference dequantization (float multiply, then subtract), so values are bit-exact.
template <int TYPE> struct Block;
template <> struct Block<T_Q8_0> { static constexpr int bytes = 34, elems = 32; };
template <> struct Block<T_Q4_0> { static constexpr int bytes = 18, elems = 32; };
template <> struct Block<T_Q4_K> { static constexpr int bytes = 144, elems = 256; };
template <> struct Block<T_Q5_K> { static constexpr int bytes = 176, elems = 256; };
template <> struct Block<T_Q6_K> { static constexpr int bytes = 210, elems = 256; };

// Q8_0: 34-byte blocks of 32: f16 d, int8 q[32]; x = d * q
__device__ __forceinline__ void deq16_q8_0(const char *row, int u, float *x) {
    const char *blk = row + (u / 2) * 34;
    float d = f16_at(blk);
    const signed char *q = (const signed char *)blk + 2 + 16 * (u % 2);
#pragma unroll
    for (int i = 0; i < 16; i++) x[i] = __fmul_rn(d, (float)q[i]);
}

// Q4_0: 18-byte blocks of 32: f16 d, 16 bytes of nibbles (low: elements 0..15); x = d * (q - 8)
__device__ __forceinline__ void deq16_q4_0(const char *row, int u, float *x) {
    const char *blk = row + (u / 2) * 18;
    float d = f16_at(blk);
    const unsigned char *q = (const unsigned char *)blk + 2;
    int sh = 4 * (u % 2);
#pragma unroll
    for (int i = 0; i < 16; i++) x[i] = __fmul_rn(d, (float)(((q[i] >> sh) & 0xF) - 8));
}

// 6-bit scale and min of sub-block s (0..7) of a Q4_K/Q5_K block from its 12 scale bytes
__device__ __forceinline__ void k4_scale_min(const unsigned char *sc, int s, float &scale, float &mn) {
    if (s < 4) {
        scale = (float)(sc[s] & 63);
        mn = (float)(sc[s + 4] & 63);
    } else {
        scale = (float)((sc[s + 4] & 0xF) | ((sc[s - 4] >> 6) << 4));
        mn = (float)((sc[s + 4] >> 4) | ((sc[s] >> 6) << 4));
    }
}

// Q4_K (144 B, 256 elements): f16 d, f16 dmin, scales[12], qs[128]. Sub-block s of 32 takes the
// low (s even) or high nibbles of qs[32 (s/2) ..]; x = (d sc) q - (dmin m).
// Q5_K (176 B): the same with qh[32] before qs, bit s of qh[l] the 5th bit of q.
template <bool HAS_QH>
__device__ __forceinline__ void deq16_k4(const char *row, int u, float *x) {
    constexpr int bytes = HAS_QH ? 176 : 144;
    const unsigned char *blk = (const unsigned char *)(row + (u / 16) * bytes);
    int r = u % 16, s = r / 2, l0 = 16 * (r % 2);
    float sc, mn;
    k4_scale_min(blk + 4, s, sc, mn);
    float d1 = __fmul_rn(f16_at((const char *)blk), sc), m1 = __fmul_rn(f16_at((const char *)blk + 2), mn);
    const unsigned char *qs = blk + (HAS_QH ? 48 : 16) + 32 * (s / 2) + l0;
    int sh = 4 * (s % 2);
#pragma unroll
    for (int i = 0; i < 16; i++) {
        int q = (qs[i] >> sh) & 0xF;
        if (HAS_QH) q |= ((blk[16 + l0 + i] >> s) & 1) << 4;
        x[i] = __fsub_rn(__fmul_rn(d1, (float)q), m1);
    }
}

// Q6_K (210 B, 256 elements): ql[128], qh[64], int8 scales[16], f16 d. Element 128h + 32k + l takes
// the low (k < 2) or high nibble of ql[64h + 32 (k % 2) + l] and bits 2k, 2k+1 of qh[32h + l];
// x = (d scales[j / 16]) (q - 32).
__device__ __forceinline__ void deq16_q6_k(const char *row, int u, float *x) {
    const unsigned char *blk = (const unsigned char *)(row + (u / 16) * 210);
    int r = u % 16, h = r / 8, k = (r % 8) / 2, l0 = 16 * (r % 2);
    float d1 = __fmul_rn(f16_at((const char *)blk + 208), (float)((const signed char *)blk)[192 + r]);
    const unsigned char *ql = blk + 64 * h + 32 * (k % 2) + l0, *qh = blk + 128 + 32 * h + l0;
#pragma unroll
    for (int i = 0; i < 16; i++) {
        int q = ((ql[i] >> (4 * (k / 2))) & 0xF) | (((qh[i] >> (2 * k)) & 3) << 4);
        x[i] = __fmul_rn(d1, (float)(q - 32));
    }
}

// elements 16u .. 16u+15 of a row of any supported type (float types read 16 elements at stride nb0)
template <int TYPE>
__device__ __forceinline__ void deq16(const char *row, long long nb0, int u, float *x) {
    if constexpr (TYPE == T_Q8_0) deq16_q8_0(row, u, x);
    else if constexpr (TYPE == T_Q4_0) deq16_q4_0(row, u, x);
    else if constexpr (TYPE == T_Q4_K) deq16_k4<false>(row, u, x);
    else if constexpr (TYPE == T_Q5_K) deq16_k4<true>(row, u, x);
    else if constexpr (TYPE == T_Q6_K) deq16_q6_k(row, u, x);
    else {
#pragma unroll
        for (int i = 0; i < 16; i++) x[i] = ld(TYPE, row + (16LL * u + i) * nb0);
    }
}

// ---- reductions ----
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double warp_sum_d(double v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = WARP / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// block-wide sums and maxima (blockDim.x a multiple of 32, at most 1024); every thread gets the result
__device__ __forceinline__ double block_sum_d(double v) {
    __shared__ double tmp[32];
    int lane = threadIdx.x % WARP, w = threadIdx.x / WARP, nw = blockDim.x / WARP;
    v = warp_sum_d(v);
    __syncthreads();
    if (lane == 0) tmp[w] = v;
    __syncthreads();
    v = lane < nw ? tmp[lane] : 0.0;
    return warp_sum_d(v);
}

__device__ __forceinline__ float block_max(float v) {
    __shared__ float tmpm[32];
    int lane = threadIdx.x % WARP, w = threadIdx.x / WARP, nw = blockDim.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) tmpm[w] = v;
    __syncthreads();
    v = lane < nw ? tmpm[lane] : -INFINITY;
    return warp_max(v);
}
