// mul_mat: d[m, n, i2, i3] = sum_k a[k, m, i2 / r2, i3 / r3] * b[k, n, i2, i3] (r2 = ne12 / ne02,
// r3 = ne13 / ne03), and with -DID mul_mat_id: d[m, e, t] = sum_k a[k, m, ids[e, t]] * b[k, e % ne1(b), t].
// A work-group of WG invocations computes NR consecutive rows m of d for one column: invocation l
// takes every WG-th 16-element unit of K (a dequantized or loaded by weights.glsl's a16, -DDEQ or
// -DTA with -DA_CONTIG), each unit of b loaded once for the NR rows; else (-DTA alone, strided or
// K % 16 != 0) every WG-th element. Partial sums meet in a tree over the group. Several tokens with
// contiguous rows go to mul_mat_tiled.comp. -DTB=F32|F16.
#version 450
#ifdef ID
#define N_TENSORS 4
#else
#define N_TENSORS 3
#endif
#include "common.glsl"
#include "weights.glsl"
layout(local_size_x = WG) in;
TENSOR(2, b, readonly);
#ifdef ID
TENSOR(3, ids, readonly);
TENSOR(4, d, );
#else
TENSOR(3, d, );
#endif

shared float part_[NR * WG];

void main() {
    uint l = gl_LocalInvocationID.x, M = NE(d).x;
    uint n_mb = (M + NR - 1u) / NR, g = group_index();
    uint m0 = (g % n_mb) * NR, rest = g / n_mb;
#ifdef ID
    uint e = rest % NE(d).y, t = rest / NE(d).y;
    if (t >= NE(d).z) return;
    uint ex = U32(ids, AT(ids, e, t, 0u, 0u));
    if (ex >= NE(a).z) return;  // the reference raises; leave the rows unwritten
    uint a_row0 = OFF(a) + ex * NB(a).z;
    uint brow = AT(b, 0u, e % NE(b).y, t, 0u);
    uvec3 c = uvec3(e, t, 0u);
#else
    if (rest >= NROWS(d)) return;
    uvec3 c = row_index(rest, NE(d));  // (n, i2, i3)
    uint a_row0 = OFF(a) + (c.y / (NE(b).z / NE(a).z)) * NB(a).z + (c.z / (NE(b).w / NE(a).w)) * NB(a).w;
    uint brow = AT(b, 0u, c.x, c.y, c.z);
#endif
    uint base = A_WINDOW(a_row0 + m0 * NB(a).y);  // the group's rows lie within NR rows of it
    uint nr = min(NR, M - m0);
    float acc[NR];
    [[unroll]] for (uint i = 0; i < NR; i++) acc[i] = 0.0;
#if defined(DEQ) || defined(A_CONTIG)
    for (uint u = l; u < NE(a).x / 16u; u += WG) {
        float x[16];
        [[unroll]] for (uint j = 0; j < 16u; j++) x[j] = LD(TB, b, brow + (16u * u + j) * NB(b).x);
        [[unroll]] for (uint i = 0; i < NR; i++) {
            if (i < nr) {
                float w[16];
                a16(base + i * NB(a).y, u, w);
                float s = 0.0;
                [[unroll]] for (uint j = 0; j < 16u; j++) s += w[j] * x[j];
                acc[i] += s;
            }
        }
    }
#else
    for (uint k = l; k < NE(a).x; k += WG) {
        float x = LD(TB, b, brow + k * NB(b).x);
        [[unroll]] for (uint i = 0; i < NR; i++)
            if (i < nr) acc[i] += LD(TA, a, base + i * NB(a).y + k * NB(a).x) * x;
    }
#endif
    [[unroll]] for (uint i = 0; i < NR; i++) part_[i * WG + l] = acc[i];
    memoryBarrierShared();
    barrier();
    [[unroll]] for (uint s = WG / 2; s > 0; s >>= 1) {
        if (l < s)
            [[unroll]] for (uint i = 0; i < NR; i++) part_[i * WG + l] += part_[i * WG + l + s];
        memoryBarrierShared();
        barrier();
    }
    for (uint i = l; i < nr; i += WG) ST_F32(d, AT(d, m0 + i, c.x, c.y, c.z), part_[i * WG]);
}
