// Binding 1, the tensor `a` of mul_mat / mul_mat_id / get_rows: weights, read in place in
// their GGUF type. Include after common.glsl.
//
// A tensor larger than one descriptor's range (maxStorageBufferRange: 128 MiB on lavapipe)
// is bound as A_NW windows of 2W bytes starting every W = 2^WIN_SHIFT bytes, so any run of at
// most W bytes lies whole in one window. A_WINDOW(byte) picks the window of a run starting at
// `byte` and returns the run's address inside it; the shader calls it with a work-group-uniform
// address (a descriptor array index must be dynamically uniform) and keeps every access of the
// group within W bytes of it.
//
// -DTA=F32|F16|BF16: plain rows; -DDEQ=<GGUF type id of Q8_0|Q4_0|Q4_K|Q5_K|Q6_K>: block rows dequantized in the
// shader, 16 elements ("a unit") at a time, bit-exact with graphir/quants.py (ggml's order of
// float operations; `precise` forbids fusing them).
#ifndef GRAPHIR_WEIGHTS_GLSL
#define GRAPHIR_WEIGHTS_GLSL

#ifdef A_NW
layout(std430, set = 0, binding = 1) readonly buffer a_buf { uint d[]; } a_w[A_NW];
const uint a_i = 0u;
uint a_win = 0u;
#define a_d a_w[a_win].d
#define A_WINDOW(B) (a_win = (B) >> WIN_SHIFT, (B) - (a_win << WIN_SHIFT))
#else
TENSOR(1, a, readonly);
#define A_WINDOW(B) (B)
#endif

// 16 bytes from a 2-aligned byte address of a, little-endian in 4 words
uvec4 a_bytes16(uint b) {
    uint w = b >> 2;
    if ((b & 2u) == 0u) return uvec4(a_d[w], a_d[w + 1u], a_d[w + 2u], a_d[w + 3u]);
    uint x0 = a_d[w], x1 = a_d[w + 1u], x2 = a_d[w + 2u], x3 = a_d[w + 3u], x4 = a_d[w + 4u];
    return uvec4((x0 >> 16) | (x1 << 16), (x1 >> 16) | (x2 << 16), (x2 >> 16) | (x3 << 16), (x3 >> 16) | (x4 << 16));
}

float a_f16(uint b) { return unpackHalf2x16(HALF_BITS(a, b)).x; }
uint a_byte(uint b) { return BYTE(a, b); }
uint byte_of(uvec4 v, uint j) { return (v[j >> 2] >> ((j & 3u) << 3)) & 0xFFu; }

#if defined(DEQ)
// DEQ is the GGUF type id
#define TYPE_Q4_0 2
#define TYPE_Q8_0 8
#define TYPE_Q4_K 12
#define TYPE_Q5_K 13
#define TYPE_Q6_K 14
#if DEQ == TYPE_Q8_0
#define DEQ_BLOCK_BYTES 34u
#elif DEQ == TYPE_Q4_0
#define DEQ_BLOCK_BYTES 18u
#elif DEQ == TYPE_Q4_K
#define DEQ_BLOCK_BYTES 144u
#elif DEQ == TYPE_Q5_K
#define DEQ_BLOCK_BYTES 176u
#else
#define DEQ_BLOCK_BYTES 210u
#endif
#define DEQ_BLOCK_ELEMS (DEQ == TYPE_Q8_0 || DEQ == TYPE_Q4_0 ? 32u : 256u)

// elements 16u .. 16u + 15 of the row of blocks starting at byte `row` of a
void deq16(uint row, uint u, out float x[16]) {
#if DEQ == TYPE_Q8_0  // 34-byte blocks of 32: f16 d, int8 q[32]; x = d * q
    uint blk = row + (u >> 1) * 34u;
    float d = a_f16(blk);
    uvec4 q = a_bytes16(blk + 2u + 16u * (u & 1u));
    [[unroll]] for (uint j = 0; j < 16; j++) x[j] = d * float(bitfieldExtract(int(q[j >> 2]), int((j & 3u) << 3), 8));
#elif DEQ == TYPE_Q4_0  // 18-byte blocks of 32: f16 d, 16 bytes of nibbles (low: elements 0..15); x = d * (q - 8)
    uint blk = row + (u >> 1) * 18u;
    float d = a_f16(blk);
    uvec4 q = a_bytes16(blk + 2u);
    uint sh = 4u * (u & 1u);
    [[unroll]] for (uint j = 0; j < 16; j++) x[j] = d * float(int((byte_of(q, j) >> sh) & 0xFu) - 8);
#elif DEQ == TYPE_Q4_K || DEQ == TYPE_Q5_K
    // 256 elements: f16 d, f16 dmin, scales[12], (Q5_K: qh[32]), qs[128]; sub-block s of 32 takes
    // the low (s even) or high nibbles of qs[32 (s/2) ..]; x = (d sc) q - (dmin m)
    uint blk = row + (u >> 4) * DEQ_BLOCK_BYTES;
    uint r = u & 15u, s = r >> 1, l0 = 16u * (r & 1u);
    uint sc, m;
    if (s < 4u) {
        sc = a_byte(blk + 4u + s) & 63u;
        m = a_byte(blk + 8u + s) & 63u;
    } else {
        sc = (a_byte(blk + 8u + s) & 0xFu) | ((a_byte(blk + s) >> 6) << 4);
        m = (a_byte(blk + 8u + s) >> 4) | ((a_byte(blk + 4u + s) >> 6) << 4);
    }
    precise float d1 = a_f16(blk) * float(sc);
    precise float m1 = a_f16(blk + 2u) * float(m);
#if DEQ == TYPE_Q5_K
    uvec4 q = a_bytes16(blk + 48u + 32u * (s >> 1) + l0);
    uvec4 qh = a_bytes16(blk + 16u + l0);
#else
    uvec4 q = a_bytes16(blk + 16u + 32u * (s >> 1) + l0);
#endif
    uint sh = 4u * (s & 1u);
    [[unroll]] for (uint j = 0; j < 16; j++) {
        uint v = (byte_of(q, j) >> sh) & 0xFu;
#if DEQ == TYPE_Q5_K
        v |= ((byte_of(qh, j) >> s) & 1u) << 4;
#endif
        precise float p = d1 * float(v);
        x[j] = p - m1;
    }
#elif DEQ == TYPE_Q6_K
    // 256 elements: ql[128], qh[64], int8 scales[16], f16 d. Element 128h + 32k + l takes the low
    // (k < 2) or high nibble of ql[64h + 32 (k % 2) + l] and bits 2k, 2k+1 of qh[32h + l];
    // x = (d scales[j / 16]) (q - 32)
    uint blk = row + (u >> 4) * 210u;
    uint r = u & 15u, h = r >> 3, k = (r & 7u) >> 1, l0 = 16u * (r & 1u);
    precise float d1 = a_f16(blk + 208u) * float(bitfieldExtract(int(a_byte(blk + 192u + r)), 0, 8));
    uvec4 lo = a_bytes16(blk + 64u * h + 32u * (k & 1u) + l0);
    uvec4 hi = a_bytes16(blk + 128u + 32u * h + l0);
    [[unroll]] for (uint j = 0; j < 16; j++) {
        uint q = ((byte_of(lo, j) >> (4u * (k >> 1))) & 0xFu) | (((byte_of(hi, j) >> (2u * k)) & 3u) << 4);
        x[j] = d1 * float(int(q) - 32);
    }
#endif
}
#endif  // DEQ

#define SIZE_F32 4u
#define SIZE_F16 2u
#define SIZE_BF16 2u
#define SIZE_(T) SIZE_##T
#define SIZE(T) SIZE_(T)

// elements 16u .. 16u + 15 of a's row at byte `row`: dequantized (-DDEQ) or loaded from a
// contiguous F32/F16/BF16 row (-DTA with -DA_CONTIG)
void a16(uint row, uint u, out float x[16]) {
#if defined(DEQ)
    deq16(row, u, x);
#elif defined(A_CONTIG)
    [[unroll]] for (uint j = 0; j < 16u; j++) x[j] = LD(TA, a, row + (16u * u + j) * SIZE(TA));
#endif
}

#endif
