// sum_rows (-DOP_SUM), mean (-DOP_MEAN) and argmax (-DOP_ARGMAX) over dim 0 of an F32 tensor:
// one work-group of WG invocations per row.
#version 450
#define N_TENSORS 2
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, a, readonly);
TENSOR(2, d, );

#ifdef OP_ARGMAX
shared float val_[WG];
shared uint arg_[WG];
#endif

void main() {
    uint row = group_index(), l = gl_LocalInvocationID.x;
    if (row >= NROWS(a)) return;
    uvec3 r = row_index(row, NE(a));
    uint n = NE(a).x;
#ifdef OP_ARGMAX
    // the first index of the largest value: each invocation keeps its first max, then the
    // reduction prefers the larger value, and the lower index among equal ones
    float best = 0.0;
    uint bi = n;
    for (uint i0 = l; i0 < n; i0 += WG) {
        float x = LD_F32(a, AT(a, i0, r.x, r.y, r.z));
        if (bi == n || x > best) {
            best = x;
            bi = i0;
        }
    }
    val_[l] = best;
    arg_[l] = bi;
    memoryBarrierShared();
    barrier();
    [[unroll]] for (uint s = WG / 2; s > 0; s >>= 1) {
        if (l < s && arg_[l + s] < n &&
            (arg_[l] == n || val_[l + s] > val_[l] || (val_[l + s] == val_[l] && arg_[l + s] < arg_[l]))) {
            val_[l] = val_[l + s];
            arg_[l] = arg_[l + s];
        }
        memoryBarrierShared();
        barrier();
    }
    if (l == 0u) U32(d, AT(d, r.x, r.y, r.z, 0u)) = arg_[0];
#else
    float acc = 0.0;
    for (uint i0 = l; i0 < n; i0 += WG) acc += LD_F32(a, AT(a, i0, r.x, r.y, r.z));
    float sum = wg_sum(acc);
#ifdef OP_MEAN
    sum = sum / float(n);
#endif
    if (l == 0u) ST_F32(d, AT(d, 0u, r.x, r.y, r.z), sum);
#endif
}
