// mul_mat: d[m, n, i2, i3] = sum_k a[k, m, i2 / r2, i3 / r3] * b[k, n, i2, i3], and
// mul_mat_id: d[m, e, t] = sum_k as[k, m, ids[e, t]] * b[k, e % b.ne1, t].
// a: F32/F16/BF16 or a GGUF block type, dequantized in registers 16 elements at a time;
// b: F32/F16/BF16 (activations); d: F32. Float accumulation with explicit fused multiply-adds.
//   mul_mat_vec: one warp per row of a (MV_WARPS rows per block) and token: decode.
//   mul_mat_tiled: MM_TM x MM_TN tiles of d per block, a's tile dequantized into shared memory
//   once per MM_KC elements of K and reused by every token: prefill.
#include "common.cuh"

#define MV_WARPS 4    // kernels.py MV_WARPS
#define MM_TM 64      // kernels.py MM_TILE
#define MM_TN 64
#define MM_KC 32
#define MM_THREADS 256

// the lane's share of the dot product of row arow of a (K elements) and row brow of b
template <int TA>
__device__ __forceinline__ float row_dot(const char *arow, long long a_nb0, const char *brow, const Tensor &b, int K,
                                         int lane) {
    float acc = 0.0f;
    if (TA == T_F32 || TA == T_F16 || TA == T_BF16) {
        if (K % 16 != 0) {  // odd-sized float rows: element by element
            for (int i = lane; i < K; i += WARP)
                acc = fmaf(ld(TA, arow + i * a_nb0), ld(b.type, brow + i * b.nb[0]), acc);
            return acc;
        }
    }
    bool b_f32 = b.type == T_F32 && b.nb[0] == 4 && ((uintptr_t)brow & 15) == 0;  // float4 loads
    for (int u = lane; u < K / 16; u += WARP) {
        float x[16];
        deq16<TA>(arow, a_nb0, u, x);
        if (b_f32) {
            const float4 *b4 = (const float4 *)(brow + 64LL * u);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float4 y = b4[i];
                acc = fmaf(x[4 * i], y.x, acc);
                acc = fmaf(x[4 * i + 1], y.y, acc);
                acc = fmaf(x[4 * i + 2], y.z, acc);
                acc = fmaf(x[4 * i + 3], y.w, acc);
            }
        } else {
#pragma unroll
            for (int i = 0; i < 16; i++) acc = fmaf(x[i], ld(b.type, brow + (16LL * u + i) * b.nb[0]), acc);
        }
    }
    return acc;
}

template <int TA>
__device__ __forceinline__ void mat_vec(const Tensor &a, const Tensor &b, const Tensor &ids, Tensor &d) {
    int lane = threadIdx.x % WARP, m = blockIdx.x * MV_WARPS + threadIdx.x / WARP;
    if (m >= d.ne[0]) return;
    const char *arow, *brow;
    char *out;
    if (ids.data) {  // mul_mat_id: blockIdx.y = e (expert slot), blockIdx.z = t (token)
        int e = blockIdx.y, t = blockIdx.z;
        int ex = *(const int *)at(ids, e, t, 0, 0);
        if (ex < 0 || ex >= a.ne[2]) return;  // the cpu reference raises; leave the row unwritten
        arow = at(a, 0, m, ex, 0);
        brow = at(b, 0, e % b.ne[1], t, 0);
        out = at(d, m, e, t, 0);
    } else {  // blockIdx.y = n (token), blockIdx.z = i2 + ne2 i3
        int n = blockIdx.y, i2 = blockIdx.z % d.ne[2], i3 = blockIdx.z / d.ne[2];
        arow = at(a, 0, m, i2 / (b.ne[2] / a.ne[2]), i3 / (b.ne[3] / a.ne[3]));
        brow = at(b, 0, n, i2, i3);
        out = at(d, m, n, i2, i3);
    }
    float r = warp_sum(row_dot<TA>(arow, a.nb[0], brow, b, a.ne[0], lane));
    if (lane == 0) stf(out, r);
}

// mul_mat (ids.data == 0) and mul_mat_id over one token per block row: the decode path
extern "C" __global__ void __launch_bounds__(MV_WARPS * WARP)
mul_mat_vec(const Tensor a, const Tensor b, const Tensor ids, Tensor d) {
    switch (a.type) {
    case T_F32: mat_vec<T_F32>(a, b, ids, d); break;
    case T_F16: mat_vec<T_F16>(a, b, ids, d); break;
    case T_BF16: mat_vec<T_BF16>(a, b, ids, d); break;
    case T_Q8_0: mat_vec<T_Q8_0>(a, b, ids, d); break;
    case T_Q4_0: mat_vec<T_Q4_0>(a, b, ids, d); break;
    case T_Q4_K: mat_vec<T_Q4_K>(a, b, ids, d); break;
    case T_Q5_K: mat_vec<T_Q5_K>(a, b, ids, d); break;
    case T_Q6_K: mat_vec<T_Q6_K>(a, b, ids, d); break;
    }
}

template <int TA>
__device__ __forceinline__ void mat_mat(const Tensor &a, const Tensor &b, Tensor &d, float (*As)[MM_TM + 1],
                                        float (*Bs)[MM_TN + 1]) {
    int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    int m0 = blockIdx.x * MM_TM, n0 = blockIdx.y * MM_TN;
    int i2 = blockIdx.z % d.ne[2], i3 = blockIdx.z / d.ne[2];
    int a2 = i2 / (b.ne[2] / a.ne[2]), a3 = i3 / (b.ne[3] / a.ne[3]);
    int K = a.ne[0], M = d.ne[0], N = d.ne[1];
    float acc[4][4] = {};
    for (int k0 = 0; k0 < K; k0 += MM_KC) {
        if (tid < MM_TM * (MM_KC / 16)) {  // one 16-element unit of a row of a per thread
            int mi = tid % MM_TM, uu = tid / MM_TM;
            float x[16];
            if (m0 + mi < M) deq16<TA>(at(a, 0, m0 + mi, a2, a3), a.nb[0], k0 / 16 + uu, x);
            else
#pragma unroll
                for (int i = 0; i < 16; i++) x[i] = 0.0f;
#pragma unroll
            for (int i = 0; i < 16; i++) As[16 * uu + i][mi] = x[i];
        }
        for (int e = tid; e < MM_KC * MM_TN; e += MM_THREADS) {
            int kk = e % MM_KC, ni = e / MM_KC;
            Bs[kk][ni] = n0 + ni < N ? ld(b.type, at(b, k0 + kk, n0 + ni, i2, i3)) : 0.0f;
        }
        __syncthreads();
#pragma unroll 8
        for (int kk = 0; kk < MM_KC; kk++) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                av[i] = As[kk][tx + 16 * i];
                bv[i] = Bs[kk][ty + 16 * i];
            }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) {
            int m = m0 + tx + 16 * i, n = n0 + ty + 16 * j;
            if (m < M && n < N) stf(at(d, m, n, i2, i3), acc[i][j]);
        }
}

// mul_mat of several tokens (K a multiple of MM_KC): grid (M / MM_TM, N / MM_TN, ne2 ne3)
extern "C" __global__ void __launch_bounds__(MM_THREADS) mul_mat_tiled(const Tensor a, const Tensor b, Tensor d) {
    // one tile pair for every instantiation below (each would otherwise declare its own)
    __shared__ float As[MM_KC][MM_TM + 1];
    __shared__ float Bs[MM_KC][MM_TN + 1];
    switch (a.type) {
    case T_F32: mat_mat<T_F32>(a, b, d, As, Bs); break;
    case T_F16: mat_mat<T_F16>(a, b, d, As, Bs); break;
    case T_BF16: mat_mat<T_BF16>(a, b, d, As, Bs); break;
    case T_Q8_0: mat_mat<T_Q8_0>(a, b, d, As, Bs); break;
    case T_Q4_0: mat_mat<T_Q4_0>(a, b, d, As, Bs); break;
    case T_Q4_K: mat_mat<T_Q4_K>(a, b, d, As, Bs); break;
    case T_Q5_K: mat_mat<T_Q5_K>(a, b, d, As, Bs); break;
    case T_Q6_K: mat_mat<T_Q6_K>(a, b, d, As, Bs); break;
    }
}
