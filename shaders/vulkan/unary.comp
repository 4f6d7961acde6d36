// Elementwise unary ops, one -DOP_<NAME> per variant; p0, p1 carry scale (s, b) and clamp
// (min, max). -DT element type (F32|F16; the result has the source's type); elements by FOR_ELEMENTS
// (common.glsl).
#version 450
#define N_TENSORS 2
#include "common.glsl"
layout(local_size_x = WG) in;
TENSOR(1, a, readonly);
TENSOR(2, d, );
layout(push_constant) uniform Push {
    float p0;
    float p1;
} pc;

// log(1 + y) for y >= 0 without losing small y (GLSL has no log1p, and log near 1 may be
// accurate only in absolute terms): 2 atanh(z), z = y / (2 + y) <= 1/3, by its series for y <= 1
float log1p_(float y) {
    if (y > 1.0) return log(1.0 + y);
    float z = y / (2.0 + y), z2 = z * z, t = 1.0 / 15.0;
    [[unroll]] for (int k = 13; k >= 1; k -= 2) t = 1.0 / float(k) + z2 * t;
    return 2.0 * z * t;
}

float unary_op(float x) {
#if defined(OP_SQR)
    return x * x;
#elif defined(OP_SQRT)
    return sqrt(x);
#elif defined(OP_EXP)
    return exp(x);
#elif defined(OP_NEG)
    return -x;
#elif defined(OP_SIGMOID)
    return 1.0 / (1.0 + exp(-x));
#elif defined(OP_SILU)
    return x * (1.0 / (1.0 + exp(-x)));
#elif defined(OP_SOFTPLUS)
    return x > 20.0 ? x : log1p_(exp(x));  // ggml: x passes through above 20
#elif defined(OP_GELU)
    const float c = 0.7978845608028654;  // sqrt(2/pi); the tanh approximation, as ggml_gelu
    return 0.5 * x * (1.0 + tanh(clamp(c * x * (1.0 + 0.044715 * x * x), -15.0, 15.0)));
#elif defined(OP_SCALE)
    precise float v = x * pc.p0 + pc.p1;  // two roundings, as the reference
    return v;
#elif defined(OP_CLAMP)
    return min(max(x, pc.p0), pc.p1);
#endif
}

void element(uint i0, uvec3 r) {
    float v = unary_op(LD(T, a, AT(a, i0, r.x, r.y, r.z)));
    uint db = AT(d, i0, r.x, r.y, r.z);
    ST(T, d, db, v);
}

void main() FOR_ELEMENTS(NE(d))
