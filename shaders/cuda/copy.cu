// Copies and indexing: cont / dup / cpy (with conversion and Q8_0 / Q4_0 quantization), concat,
// repeat, get_rows, set_rows. One thread per element unless said otherwise.
#include "common.cuh"

// element i of s's logical order lands at element i of d's; same types copy raw bytes
// (bit-exact, NaN payloads kept), others convert through float
extern "C" __global__ void copy(const Tensor s, Tensor d) {
    long long idx = global_id();
    if (idx >= nelem(d)) return;
    int s0, s1, s2, s3, d0, d1, d2, d3;
    unravel(s, idx, s0, s1, s2, s3);
    unravel(d, idx, d0, d1, d2, d3);
    const char *ps = at(s, s0, s1, s2, s3);
    char *pd = at(d, d0, d1, d2, d3);
    if (s.type == d.type) {
        if (s.type == T_F16 || s.type == T_BF16) *(uint16_t *)pd = *(const uint16_t *)ps;
        else *(uint32_t *)pd = *(const uint32_t *)ps;
    } else {
        st(d.type, pd, ld(s.type, ps));
    }
}

// cpy into Q8_0 / Q4_0: one thread per block of 32 of d, quantized as ggml's reference
// quantizers (graphir/quants.py), bit for bit
extern "C" __global__ void quantize(const Tensor s, Tensor d) {
    long long gid = global_id();
    int nblk = d.ne[0] / 32;
    if (gid >= nelem(d) / 32) return;
    int blk = (int)(gid % nblk);
    long long row = gid / nblk;
    int d1 = (int)(row % d.ne[1]), d2 = (int)((row / d.ne[1]) % d.ne[2]), d3 = (int)(row / ((long long)d.ne[1] * d.ne[2]));
    float x[32], amax = 0.0f, mx = 0.0f;  // mx: the signed value of largest magnitude, first on ties
#pragma unroll  // x stays in registers
    for (int i = 0; i < 32; i++) {
        int s0, s1, s2, s3;
        unravel(s, row * d.ne[0] + blk * 32 + i, s0, s1, s2, s3);
        x[i] = ld(s.type, at(s, s0, s1, s2, s3));
        if (amax < fabsf(x[i])) {
            amax = fabsf(x[i]);
            mx = x[i];
        }
    }
    float dd;
    if (d.type == T_Q8_0) {
        char *out = at(d, 0, d1, d2, d3) + blk * 34;
        dd = amax / 127.0f;
        float id = dd != 0.0f ? 1.0f / dd : 0.0f;
#pragma unroll
        for (int i = 0; i < 32; i++) out[2 + i] = (char)(int)roundf(x[i] * id);
        *(__half *)out = __float2half_rn(dd);
    } else {
        unsigned char *out = (unsigned char *)at(d, 0, d1, d2, d3) + blk * 18;
        dd = mx / -8.0f;
        float id = dd != 0.0f ? 1.0f / dd : 0.0f;
#pragma unroll
        for (int j = 0; j < 16; j++)
            out[2 + j] = (unsigned char)(min(15, (int)(x[j] * id + 8.5f)) | (min(15, (int)(x[j + 16] * id + 8.5f)) << 4));
        *(__half *)out = __float2half_rn(dd);
    }
}

__device__ __forceinline__ void copy_raw(int type, char *pd, const char *ps) {
    if (type == T_F16 || type == T_BF16) *(uint16_t *)pd = *(const uint16_t *)ps;
    else *(uint32_t *)pd = *(const uint32_t *)ps;
}

// concat along dim (0..3) of raw elements; dim < 0: repeat (d's index modulo a.ne, b unused)
extern "C" __global__ void concat(const Tensor a, const Tensor b, Tensor d, int dim) {
    long long idx = global_id();
    if (idx >= nelem(d)) return;
    int i0, i1, i2, i3;
    unravel(d, idx, i0, i1, i2, i3);
    char *p = at(d, i0, i1, i2, i3);
    if (dim < 0) {
        copy_raw(a.type, p, at(a, i0 % a.ne[0], i1 % a.ne[1], i2 % a.ne[2], i3 % a.ne[3]));
        return;
    }
    // scalars, not an indexed array, so nothing lands in local memory
    int k = dim == 0 ? i0 : dim == 1 ? i1 : dim == 2 ? i2 : i3;
    int n = dim == 0 ? a.ne[0] : dim == 1 ? a.ne[1] : dim == 2 ? a.ne[2] : a.ne[3];
    if (k < n) {
        copy_raw(a.type, p, at(a, i0, i1, i2, i3));
    } else {  // shift the concat dim back into b
        copy_raw(a.type, p, at(b, i0 - (dim == 0) * n, i1 - (dim == 1) * n, i2 - (dim == 2) * n, i3 - (dim == 3) * n));
    }
}

// get_rows: d[i0, i, i2, i3] = a[i0, b[i, i2, i3], i2, i3] for float and I32 rows
extern "C" __global__ void get_rows(const Tensor a, const Tensor b, Tensor d) {
    long long idx = global_id();
    if (idx >= nelem(d)) return;
    int i0, i1, i2, i3;
    unravel(d, idx, i0, i1, i2, i3);
    int row = *(const int *)at(b, i1, i2, i3, 0);
    const char *ps = at(a, i0, row, i2, i3);
    char *pd = at(d, i0, i1, i2, i3);
    if (a.type == T_I32) *(int *)pd = *(const int *)ps;
    else stf(pd, ld(a.type, ps));
}

template <int TYPE>
__device__ __forceinline__ void get_rows_q_unit(const Tensor &a, const Tensor &b, Tensor &d, long long idx) {
    int units = d.ne[0] / 16;
    long long rest = idx / units;
    int u = (int)(idx % units), i1 = (int)(rest % d.ne[1]);
    int i2 = (int)((rest / d.ne[1]) % d.ne[2]), i3 = (int)(rest / ((long long)d.ne[1] * d.ne[2]));
    int row = *(const int *)at(b, i1, i2, i3, 0);
    float w[16];
    deq16<TYPE>(at(a, 0, row, i2, i3), a.nb[0], u, w);
    for (int i = 0; i < 16; i++) stf(at(d, 16 * u + i, i1, i2, i3), w[i]);
}

// get_rows of a block-quantized a: one thread per 16 elements of a row
extern "C" __global__ void get_rows_q(const Tensor a, const Tensor b, Tensor d) {
    long long idx = global_id();
    if (idx >= nelem(d) / 16) return;
    switch (a.type) {
    case T_Q8_0: get_rows_q_unit<T_Q8_0>(a, b, d, idx); break;
    case T_Q4_0: get_rows_q_unit<T_Q4_0>(a, b, d, idx); break;
    case T_Q4_K: get_rows_q_unit<T_Q4_K>(a, b, d, idx); break;
    case T_Q5_K: get_rows_q_unit<T_Q5_K>(a, b, d, idx); break;
    case T_Q6_K: get_rows_q_unit<T_Q6_K>(a, b, d, idx); break;
    }
}

// set_rows: d[i0, c[i, i2 % c.ne1, i3 % c.ne2], i2, i3] = b[i0, i, i2, i3], converted to d's type
// (F16 KV cells). One thread per (i0, i2, i3) walks the rows in order, so a repeated index keeps
// the last row (as ggml).
extern "C" __global__ void set_rows(const Tensor b, const Tensor c, Tensor d) {
    long long idx = global_id();
    if (idx >= (long long)b.ne[0] * b.ne[2] * b.ne[3]) return;
    int i0 = (int)(idx % b.ne[0]), i2 = (int)((idx / b.ne[0]) % b.ne[2]);
    int i3 = (int)(idx / ((long long)b.ne[0] * b.ne[2]));
    for (int i = 0; i < b.ne[1]; i++) {
        int row = *(const int *)at(c, i, i2 % c.ne[1], i3 % c.ne[2], 0);
        st(d.type, at(d, i0, row, i2, i3), ldf(at(b, i0, i, i2, i3)));
    }
}
