// Shared plumbing of every graphir Vulkan compute shader (GLSL 450 -> SPIR-V 1.3).
//
// Set 0, binding 0: the dispatch's meta buffer, one record per tensor binding (ne, nb in
// bytes, and the byte offset of the tensor's origin in its bound range), then `extra` floats
// (per-op tables computed on the host, e.g. ALiBi slopes). Bindings 1..N_TENSORS: the tensors,
// each a `uint` array read and written through the byte-address accessors below, so any view
// (permuted, strided, offset) is used in place. A shader defines N_TENSORS before including
// this file and declares its tensors with TENSOR(binding, name, qualifier): the record of
// tensor T is rec[binding - 1], reached through NE(T), NB(T), OFF(T) and AT(T, i0, i1, i2, i3).
//
// Push constants carry only an op's scalars (<= 128 bytes everywhere: lavapipe's limit);
// the Python mirror of every block is checked against the SPIR-V by tests/backends/test_vulkan.py.
#ifndef GRAPHIR_COMMON_GLSL
#define GRAPHIR_COMMON_GLSL
#extension GL_EXT_control_flow_attributes : require

#ifndef WG
#define WG 64
#endif

struct Rec {
    uvec4 ne;  // elements per dim
    uvec4 nb;  // bytes per dim step (nb[0]: the block size for block types)
    uint off;  // byte offset of element 0 in the bound range
    uint pad0, pad1, pad2;
};

layout(std430, set = 0, binding = 0) readonly buffer Meta {
    Rec rec[N_TENSORS];
    float extra[];
};

#define TENSOR(B, T, Q) layout(std430, set = 0, binding = B) Q buffer T##_buf { uint T##_d[]; }; \
    const uint T##_i = (B) - 1u
#define NE(T) rec[T##_i].ne
#define NB(T) rec[T##_i].nb
#define OFF(T) rec[T##_i].off
#define NELEM(T) (NE(T).x * NE(T).y * NE(T).z * NE(T).w)
#define NROWS(T) (NE(T).y * NE(T).z * NE(T).w)
// byte address of element (i0, i1, i2, i3) of T in its bound range (32-bit: ranges < 4 GiB)
#define AT(T, i0, i1, i2, i3) (OFF(T) + (i0) * NB(T).x + (i1) * NB(T).y + (i2) * NB(T).z + (i3) * NB(T).w)

// ---- loads and stores by byte address (B: a simple expression, evaluated more than once) ----
#define U32(T, B) T##_d[(B) >> 2]
#define HALF_BITS(T, B) ((U32(T, B) >> (((B) & 2u) << 3)) & 0xFFFFu)
#define BYTE(T, B) ((U32(T, B) >> (((B) & 3u) << 3)) & 0xFFu)

#define LD_F32(T, B) uintBitsToFloat(U32(T, B))
#define LD_F16(T, B) unpackHalf2x16(HALF_BITS(T, B)).x
#define LD_BF16(T, B) uintBitsToFloat(HALF_BITS(T, B) << 16)
#define LD_I32(T, B) float(int(U32(T, B)))
#define LD_(TY, T, B) LD_##TY(T, B)
#define LD(TY, T, B) LD_(TY, T, B)

// 16-bit stores share a word with a neighbour another invocation may write: two atomics that
// touch only this half, so concurrent writes of the two halves commute
#define ST_U16(T, B, H) { uint sh_ = ((B) & 2u) << 3; atomicAnd(U32(T, B), ~(0xFFFFu << sh_)); \
                          atomicOr(U32(T, B), ((H) & 0xFFFFu) << sh_); }
#define ST_F32(T, B, V) U32(T, B) = floatBitsToUint(V)
#define ST_F16(T, B, V) ST_U16(T, B, f32_to_f16(V))
#define ST_BF16(T, B, V) ST_U16(T, B, f32_to_bf16(V))
#define ST_I32(T, B, V) U32(T, B) = uint(int(V))
#define ST_(TY, T, B, V) ST_##TY(T, B, V)
#define ST(TY, T, B, V) ST_(TY, T, B, V)

// float -> f16 bits, round to nearest even (as numpy and ggml), NaN kept quiet, overflow to inf
uint f32_to_f16(float f) {
    uint x = floatBitsToUint(f), s = (x >> 16) & 0x8000u, ax = x & 0x7FFFFFFFu;
    if (ax > 0x7F800000u) return s | 0x7E00u | ((ax >> 13) & 0x3FFu);
    if (ax >= 0x477FF000u) return s | 0x7C00u;  // >= 65520 rounds to inf
    if (ax < 0x38800000u) return s | uint(roundEven(uintBitsToFloat(ax) * 16777216.0));  // subnormal: k * 2^-24
    uint r = ax - 0x38000000u;  // rebias the exponent (127 - 15)
    return s | ((r + 0xFFFu + ((r >> 13) & 1u)) >> 13);
}

// float -> bf16 bits, round to nearest even, NaN kept quiet (as ggml_compute_fp32_to_bf16)
uint f32_to_bf16(float f) {
    uint u = floatBitsToUint(f);
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) return (u >> 16) | 64u;
    return (u + (0x7FFFu + ((u >> 16) & 1u))) >> 16;
}

// ---- the dispatch grid: Python's grid(n) spreads n work-groups over x (<= 65535) and y ----
uint group_index() {
    return gl_WorkGroupID.x + gl_NumWorkGroups.x * (gl_WorkGroupID.y + gl_NumWorkGroups.y * gl_WorkGroupID.z);
}

// row r of a [ne0, ne1, ne2, ne3] shape -> (i1, i2, i3)
uvec3 row_index(uint r, uvec4 ne) {
    return uvec3(r % ne.y, (r / ne.y) % ne.z, r / (ne.y * ne.z));
}

// flat logical index -> (i0, i1, i2, i3)
uvec4 unravel(uint idx, uvec4 ne) {
    uint q0 = idx / ne.x, q1 = q0 / ne.y;
    return uvec4(idx - q0 * ne.x, q0 - q1 * ne.y, q1 % ne.z, q1 / ne.z);
}

// ---- elementwise work: FOR_ELEMENTS(ne) calls `void element(uint i0, uvec3 r)` (r = (i1, i2, i3),
// defined by the shader first) for each element of shape `ne` this invocation owns. A work-group
// takes WG * EPT consecutive elements of one row, EPT per invocation at a stride of WG (an
// llvmpipe work-group costs microseconds: give it work); -DFLAT: of the flat order instead, for
// rows shorter than a work-group. Python's groups: ceil(ne0 / (WG EPT)) * rows, FLAT ceil(n / (WG EPT)).
#ifndef EPT
#define EPT 1
#endif
#ifdef FLAT
#define FOR_ELEMENTS(ne) { \
    uint base_ = group_index() * (WG * EPT) + gl_LocalInvocationID.x, n_ = ne.x * ne.y * ne.z * ne.w; \
    for (uint k_ = 0u; k_ < EPT; k_++) { \
        uint idx_ = base_ + k_ * WG; \
        if (idx_ >= n_) break; \
        uint row_ = idx_ / ne.x; \
        element(idx_ - row_ * ne.x, row_index(row_, ne)); \
    } }
#else
#define FOR_ELEMENTS(ne) { \
    uint n_chunks_ = (ne.x + WG * EPT - 1u) / (WG * EPT), g_ = group_index(), row_ = g_ / n_chunks_; \
    if (row_ < ne.y * ne.z * ne.w) { \
        uvec3 r_ = row_index(row_, ne); \
        uint base_ = (g_ - row_ * n_chunks_) * (WG * EPT) + gl_LocalInvocationID.x; \
        for (uint k_ = 0u; k_ < EPT; k_++) { \
            uint i0_ = base_ + k_ * WG; \
            if (i0_ >= ne.x) break; \
            element(i0_, r_); \
        } } }
#endif

// ---- work-group reductions over WG invocations (a power of two) ----
shared float red_[WG];

float wg_sum(float v) {
    uint l = gl_LocalInvocationID.x;
    red_[l] = v;
    memoryBarrierShared();
    barrier();
    [[unroll]] for (uint s = WG / 2; s > 0; s >>= 1) {
        if (l < s) red_[l] += red_[l + s];
        memoryBarrierShared();
        barrier();
    }
    float r = red_[0];
    barrier();
    return r;
}

float wg_max(float v) {
    uint l = gl_LocalInvocationID.x;
    red_[l] = v;
    memoryBarrierShared();
    barrier();
    [[unroll]] for (uint s = WG / 2; s > 0; s >>= 1) {
        if (l < s) red_[l] = max(red_[l], red_[l + s]);
        memoryBarrierShared();
        barrier();
    }
    float r = red_[0];
    barrier();
    return r;
}

#endif
