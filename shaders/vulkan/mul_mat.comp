// mul_mat: d[m, n, i2, i3] = sum_k a[k, m, i2 / r2, i3 / r3] * b[k, n, i2, i3] (r2 = ne12 / ne02,
// r3 = ne13 / ne03), and with -DID mul_mat_id: d[m, e, t] = sum_k a[k, m, ids[e, t]] * b[k, e % ne1(b), t].
// A work-group of WG invocations computes NR consecutive rows m of d for NT consecutive tokens (-DNT,
// default 1: a's units are read once for the block of tokens; mul_mat only): invocation l
// takes every WG-th 16-element unit of K (a dequantized or loaded by weights.glsl's a16, -DDEQ or
// -DTA with -DA_CONTIG), each unit of b loaded once for the NR rows; else (-DTA alone, strided or
// K % 16 != 0) every WG-th element. Partial sums meet in a tree over the group. Where the device takes
// it (MM_TILED_MIN_N), many tokens with contiguous rows go to mul_mat_tiled.comp. -DTB=F32|F16.
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

#ifndef NT
#define NT 1
#endif
#ifndef ITEM_ROWS
shared float part_[NR * NT * WG];
#endif

void main() {
    uint l = gl_LocalInvocationID.x, M = NE(d).x;
    uint n_mb = (M + NR - 1u) / NR, g = group_index();
    uint m0 = (g % n_mb) * NR, rest = g / n_mb;
    uint nt = 1u;
#ifdef ID
    uint e = rest % NE(d).y, t = rest / NE(d).y;
    if (t >= NE(d).z) return;
    uint ex = U32(ids, AT(ids, e, t, 0u, 0u));
    if (ex >= NE(a).z) return;  // the reference raises; leave the rows unwritten
    uint a_row0 = OFF(a) + ex * NB(a).z;
    uint brow = AT(b, 0u, e % NE(b).y, t, 0u);
    uvec3 c = uvec3(e, t, 0u);
#else
    // rest -> (block of NT tokens, i2, i3)
    uint n_nb = (NE(d).y + NT - 1u) / NT;
    if (rest >= n_nb * NE(d).z * NE(d).w) return;
    uvec3 c = uvec3((rest % n_nb) * NT, (rest / n_nb) % NE(d).z, rest / (n_nb * NE(d).z));  // (n0, i2, i3)
    nt = min(NT, NE(d).y - c.x);
    uint a_row0 = OFF(a) + (c.y / (NE(b).z / NE(a).z)) * NB(a).z + (c.z / (NE(b).w / NE(a).w)) * NB(a).w;
    uint brow = AT(b, 0u, c.x, c.y, c.z);
#endif
    uint base = A_WINDOW(a_row0 + m0 * NB(a).y);  // the group's rows lie within NR rows of it
    uint nr = min(NR, M - m0);
#ifdef ITEM_ROWS
    // CPU devices (NR == WG): invocation l sums row m0 + l whole, in order, for the NT tokens; no shared
    // memory, no barriers (a work-group is one SIMD fiber of lavapipe, its lanes the rows)
    float acc1[NT];
    [[unroll]] for (uint t = 0; t < NT; t++) acc1[t] = 0.0;
    if (l < nr) {
        uint arow = base + l * NB(a).y;
#if defined(DEQ) || defined(A_CONTIG)
        for (uint u = 0u; u < NE(a).x / 16u; u++) {
            float w[16];
            a16(arow, u, w);
            [[unroll]] for (uint t = 0; t < NT; t++) {
                if (t < nt) {
                    float s = 0.0;
                    [[unroll]] for (uint j = 0; j < 16u; j++) s += w[j] * LD(TB, b, brow + t * NB(b).y + (16u * u + j) * NB(b).x);
                    acc1[t] += s;
                }
            }
        }
#else
        for (uint k = 0u; k < NE(a).x; k++) {
            float w = LD(TA, a, arow + k * NB(a).x);
            [[unroll]] for (uint t = 0; t < NT; t++)
                if (t < nt) acc1[t] += w * LD(TB, b, brow + t * NB(b).y + k * NB(b).x);
        }
#endif
        [[unroll]] for (uint t = 0; t < NT; t++)
            if (t < nt) ST_F32(d, AT(d, m0 + l, c.x + t, c.y, c.z), acc1[t]);
    }
#else
    // acc[t * NR + i]: row m0 + i, token c.x + t; each token summed in the same order whatever NT
    // (a verify batch is bit-identical to single-token decodes)
    float acc[NR * NT];
    [[unroll]] for (uint i = 0; i < NR * NT; i++) acc[i] = 0.0;
#if defined(DEQ) || defined(A_CONTIG)
    for (uint u = l; u < NE(a).x / 16u; u += WG) {
        float x[16 * NT];
        [[unroll]] for (uint t = 0; t < NT; t++)
            if (t < nt)
                [[unroll]] for (uint j = 0; j < 16u; j++) x[t * 16u + j] = LD(TB, b, brow + t * NB(b).y + (16u * u + j) * NB(b).x);
        [[unroll]] for (uint i = 0; i < NR; i++) {
            if (i < nr) {
                float w[16];
                a16(base + i * NB(a).y, u, w);
                [[unroll]] for (uint t = 0; t < NT; t++) {
                    if (t < nt) {
                        float s = 0.0;
                        [[unroll]] for (uint j = 0; j < 16u; j++) s += w[j] * x[t * 16u + j];
                        acc[t * NR + i] += s;
                    }
                }
            }
        }
    }
#else
    for (uint k = l; k < NE(a).x; k += WG) {
        [[unroll]] for (uint t = 0; t < NT; t++) {
            if (t < nt) {
                float x = LD(TB, b, brow + t * NB(b).y + k * NB(b).x);
                [[unroll]] for (uint i = 0; i < NR; i++)
                    if (i < nr) acc[t * NR + i] += LD(TA, a, base + i * NB(a).y + k * NB(a).x) * x;
            }
        }
    }
#endif
    [[unroll]] for (uint i = 0; i < NR * NT; i++) part_[i * WG + l] = acc[i];
    memoryBarrierShared();
    barrier();
    [[unroll]] for (uint s = WG / 2; s > 0; s >>= 1) {
        if (l < s)
            [[unroll]] for (uint i = 0; i < NR * NT; i++) part_[i * WG + l] += part_[i * WG + l + s];
        memoryBarrierShared();
        barrier();
    }
    for (uint i = l; i < NR * NT; i += WG) {
        uint t = i / NR, r = i % NR;
        if (t < nt && r < nr) ST_F32(d, AT(d, m0 + r, c.x + t, c.y, c.z), part_[i * WG]);
    }
#endif
}
