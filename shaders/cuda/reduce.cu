// Row reductions over dim 0 of F32 tensors: rms_norm / l2_norm, sum_rows / mean / argmax,
// soft_max_ext, argsort / top_k. One block of blockDim.x threads (a multiple of 32) per row;
// sums in double, rounded to float once (ggml_float).
#include "common.cuh"

enum : int { R_SUM = 0, R_MEAN = 1, R_ARGMAX = 2 };

__device__ __forceinline__ void row_of(const Tensor &a, int r, int &i1, int &i2, int &i3) {
    i1 = r % a.ne[1];
    i2 = (r / a.ne[1]) % a.ne[2];
    i3 = r / (a.ne[1] * a.ne[2]);
}

// rms_norm (l2 == 0): x / sqrt(mean(x^2) + eps); l2: x / max(|x|, eps)
extern "C" __global__ void norm_rows(const Tensor a, Tensor d, float eps, int l2) {
    int i1, i2, i3;
    row_of(a, blockIdx.x, i1, i2, i3);
    double acc = 0.0;
    for (int i0 = threadIdx.x; i0 < a.ne[0]; i0 += blockDim.x) {
        float x = ldf(at(a, i0, i1, i2, i3));
        acc += (double)(x * x);
    }
    double sum = block_sum_d(acc);
    float scale = l2 ? 1.0f / fmaxf(sqrtf((float)sum), eps) : 1.0f / sqrtf((float)(sum / a.ne[0]) + eps);
    for (int i0 = threadIdx.x; i0 < a.ne[0]; i0 += blockDim.x)
        stf(at(d, i0, i1, i2, i3), ldf(at(a, i0, i1, i2, i3)) * scale);
}

// sum_rows / mean (F32 result at d[0, i1, i2, i3]) and argmax (I32 at d[i1, i2, i3]: the first
// index of the largest value)
extern "C" __global__ void rows(const Tensor a, Tensor d, int op) {
    int i1, i2, i3;
    row_of(a, blockIdx.x, i1, i2, i3);
    if (op == R_ARGMAX) {
        __shared__ float val[1024];
        __shared__ int arg[1024];
        int l = threadIdx.x, n = a.ne[0];
        float best = -INFINITY;
        int bi = n;
        for (int i0 = l; i0 < n; i0 += blockDim.x) {
            float x = ldf(at(a, i0, i1, i2, i3));
            if (bi == n || x > best) {
                best = x;
                bi = i0;
            }
        }
        val[l] = best;
        arg[l] = bi;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s >>= 1) {
            if (l < s && arg[l + s] < n &&
                (arg[l] == n || val[l + s] > val[l] || (val[l + s] == val[l] && arg[l + s] < arg[l]))) {
                val[l] = val[l + s];
                arg[l] = arg[l + s];
            }
            __syncthreads();
        }
        if (l == 0) *(int *)at(d, i1, i2, i3, 0) = arg[0];
        return;
    }
    double acc = 0.0;
    for (int i0 = threadIdx.x; i0 < a.ne[0]; i0 += blockDim.x) acc += (double)ldf(at(a, i0, i1, i2, i3));
    float sum = (float)block_sum_d(acc);
    if (op == R_MEAN) sum = sum / (float)a.ne[0];
    if (threadIdx.x == 0) stf(at(d, 0, i1, i2, i3), sum);
}

// soft_max_ext: softmax of a*scale + slopes[i2]*mask; m.data == 0: no mask (F32/F16 mask
// broadcast over dims 2, 3). Each thread rereads only what it wrote, so d may alias a.
extern "C" __global__ void soft_max(const Tensor a, const Tensor m, const float *slopes, Tensor d, float scale) {
    int i1, i2, i3;
    row_of(a, blockIdx.x, i1, i2, i3);
    float mx = -INFINITY;
    for (int i0 = threadIdx.x; i0 < a.ne[0]; i0 += blockDim.x) {
        float w = ldf(at(a, i0, i1, i2, i3)) * scale;
        if (m.data) w += slopes[i2] * ld(m.type, at(m, i0, i1, i2 % m.ne[2], i3 % m.ne[3]));
        stf(at(d, i0, i1, i2, i3), w);
        mx = fmaxf(mx, w);
    }
    mx = block_max(mx);
    double acc = 0.0;
    for (int i0 = threadIdx.x; i0 < a.ne[0]; i0 += blockDim.x) {
        char *p = at(d, i0, i1, i2, i3);
        float e = expf(ldf(p) - mx);
        stf(p, e);
        acc += (double)e;
    }
    float inv = (float)(1.0 / block_sum_d(acc));
    for (int i0 = threadIdx.x; i0 < a.ne[0]; i0 += blockDim.x) {
        char *p = at(d, i0, i1, i2, i3);
        stf(p, ldf(p) * inv);
    }
}

// argsort (stable; desc != 0 descending) and top_k (d.ne0 = k: the first k of the stable
// descending order): one thread per element counts the elements ranked before it and writes its
// own index at that rank. O(ne0^2) per row, exact.
extern "C" __global__ void argsort(const Tensor a, Tensor d, int desc) {
    long long idx = global_id();
    if (idx >= nelem(a)) return;
    int i0, i1, i2, i3;
    unravel(a, idx, i0, i1, i2, i3);
    float x = ldf(at(a, i0, i1, i2, i3));
    int rank = 0;
    for (int j = 0; j < a.ne[0]; j++) {
        float y = ldf(at(a, j, i1, i2, i3));
        rank += (desc ? y > x : y < x) || (y == x && j < i0);
    }
    if (rank < d.ne[0]) *(int *)at(d, rank, i1, i2, i3) = i0;
}
