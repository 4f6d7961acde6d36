/* placeholder family file: add (the pipeline's first kernel; the elementwise family replaces it) */
#include "graphir_cpu.h"

void gr_k_add(const gr_op *op, const gr_thread *th) {
    const gr_tensor *d = &op->dst, *a = &op->src[0], *b = &op->src[1];
    int64_t r0, r1;
    gr_chunk(gr_nrows(d), th->ith, th->nth, &r0, &r1);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        gr_unravel_row(d, r, &i1, &i2, &i3);
        for (int64_t i0 = 0; i0 < d->ne[0]; i0++) {
            float x = gr_load_f(gr_ptr(a, i0, i1, i2, i3), a->type);
            float y = gr_load_f(gr_ptr(b, i0 % b->ne[0], i1 % b->ne[1], i2 % b->ne[2], i3 % b->ne[3]), b->type);
            gr_store_f(gr_ptr(d, i0, i1, i2, i3), d->type, x + y);
        }
    }
}
