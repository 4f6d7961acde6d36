// Elementwise unary ops, one -DOP_<NAME> per program; p0, p1 carry scale (s, b) and clamp (min, max).
// -DT element type (the result has the source's type).
#include "common.h"

inline float unary_op(float x, float p0, float p1) {
#if defined(OP_SQR)
    return x * x;
#elif defined(OP_SQRT)
    return sqrt(x);
#elif defined(OP_EXP)
    return exp(x);
#elif defined(OP_NEG)
    return -x;
#elif defined(OP_SIGMOID)
    return 1.0f / (1.0f + exp(-x));
#elif defined(OP_SILU)
    return x * (1.0f / (1.0f + exp(-x)));
#elif defined(OP_SOFTPLUS)
    return x > 20.0f ? x : log1p(exp(x));  // ggml: x passes through above 20
#elif defined(OP_GELU)
    const float c = 0.7978845608028654f;  // sqrt(2/pi); tanh approximation as ggml_gelu
    return 0.5f * x * (1.0f + tanh(c * x * (1.0f + 0.044715f * x * x)));
#elif defined(OP_SCALE)
    return x * p0 + p1;
#elif defined(OP_CLAMP)
    return fmin(fmax(x, p0), p1);
#endif
}

__kernel void unary(TENSOR(a), TENSOR(d), float p0, float p1) {
    ulong idx = get_global_id(0);
    if (idx >= NELEM(d)) return;
    UNRAVEL(d, idx, i0, i1, i2, i3);
    ST(T, AT(d, i0, i1, i2, i3), unary_op(LD(T, AT(a, i0, i1, i2, i3)), p0, p1));
}
