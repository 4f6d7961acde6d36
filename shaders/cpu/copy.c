/* Copy and indexing kernels: cont, dup, cpy (with type conversion), repeat, get_rows,
 * set_rows, concat. Semantics as backends/ref/k_copy.py.
 *
 * Copies between shapes follow the logical order (row-major in ne order) of both tensors, as
 * ggml_cpy/ggml_cont: unit i of the source's flattening lands at unit i of the destination's.
 * A unit is an element, or a whole block for block-quantized types, which same-type copies
 * move as bytes (bit-exact). Conversions go through float32 tiles on the stack with
 * gr_row_to_f32 / gr_row_from_f32 (quants.c: F16C/AVX-512 for f16, Q8_0/Q4_0 quantization
 * bit-exact with graphir/quants.py).
 *
 * Threads: same-type copies split the rows of the copy (after merging dims; one long row is
 * split in granules of 64 elements); conversions, repeat and get_rows split a flat range of
 * destination units in granules of 64 elements or one block; set_rows splits planes or
 * columns so that repeated indices keep the last row (see there). Every kernel is a pure copy
 * or an elementwise conversion: results never depend on the batch or the thread count.
 */
#include "graphir_cpu.h"

enum { TILE = 1024 }; /* floats per conversion tile (a multiple of every block size) */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* units (elements, or blocks) per row */
static inline int64_t row_units(const gr_tensor *t) { return t->ne[0] / gr_block_elems(t->type); }

/* the thread's share [u0, u1) of n units, in whole granules of g */
static void share(int64_t n, int64_t g, const gr_thread *th, int64_t *u0, int64_t *u1) {
    int64_t b, e;
    gr_chunk((n + g - 1) / g, th->ith, th->nth, &b, &e);
    *u0 = min64(b * g, n);
    *u1 = min64(e * g, n);
}

/* units of 64 elements, or of one block */
static inline int64_t granule(int type) { return gr_block_elems(type) > 1 ? 1 : 64; }

/* n bytes; short rows (a conv window of 3 floats) without a libc call. d may equal s. */
static inline void copy_bytes(char *d, const char *s, int64_t n) {
    if (n >= 16) {
        memmove(d, s, (size_t)n);
    } else if (n >= 8) { /* two overlapping 8-byte moves, both loaded first */
        uint64_t a, b;
        memcpy(&a, s, 8), memcpy(&b, s + n - 8, 8);
        memcpy(d, &a, 8), memcpy(d + n - 8, &b, 8);
    } else if (n >= 4) {
        uint32_t a, b;
        memcpy(&a, s, 4), memcpy(&b, s + n - 4, 4);
        memcpy(d, &a, 4), memcpy(d + n - 4, &b, 4);
    } else {
        for (int64_t i = 0; i < n; i++) d[i] = s[i];
    }
}

/* one unit of ub bytes */
static inline void copy_unit(char *d, const char *s, int64_t ub) {
    if (ub == 4) memcpy(d, s, 4);
    else if (ub == 2) memcpy(d, s, 2);
    else memmove(d, s, (size_t)ub);
}

/* k units of ub bytes from src (stride ss bytes) to dst (stride ds); dst may equal src */
static void copy_units(char *dst, int64_t ds, const char *src, int64_t ss, int64_t k, int64_t ub) {
    if (ds == ub && ss == ub) {
        memmove(dst, src, (size_t)(k * ub));
    } else {
        for (int64_t i = 0; i < k; i++) copy_unit(dst + i * ds, src + i * ss, ub);
    }
}

/* ---- a cursor over the logical sequence of a tensor's units (converting copies, reshapes
 * between two strided tensors): (i0, row) advanced without divisions ---- */
typedef struct {
    const gr_tensor *t;
    int64_t nu; /* units per row */
    int64_t i0, i1, i2, i3;
    char *row;
} cursor;

static void cur_init(cursor *c, const gr_tensor *t, int64_t unit) {
    c->t = t;
    c->nu = row_units(t);
    c->i0 = unit % c->nu;
    gr_unravel_row(t, unit / c->nu, &c->i1, &c->i2, &c->i3);
    c->row = gr_row(t, c->i1, c->i2, c->i3);
}

static inline char *cur_ptr(const cursor *c) { return c->row + c->i0 * c->t->nb[0]; }
static inline int64_t cur_left(const cursor *c) { return c->nu - c->i0; } /* units left in the row */

static inline void cur_advance(cursor *c, int64_t k) {
    c->i0 += k;
    if (c->i0 < c->nu) return;
    const gr_tensor *t = c->t;
    c->i0 = 0;
    if (++c->i1 == t->ne[1]) {
        c->i1 = 0;
        if (++c->i2 == t->ne[2]) {
            c->i2 = 0;
            ++c->i3;
        }
    }
    c->row = gr_row(t, c->i1, c->i2, c->i3);
}

/* ======================================================================================
 * a same-shape strided copy: dims merged where both sides run contiguously across them,
 * rows copied with small-size moves, transposed sources read in tiles of rows
 * ====================================================================================== */

/* dims of a copy after merging: ne in units, byte strides of dst (dn) and src (sn) */
typedef struct {
    int64_t ne[4], dn[4], sn[4];
} xdims;

static void xdims_init(xdims *x, const gr_tensor *d, const gr_tensor *s) {
    int nd = 0;
    for (int i = 0; i < 4; i++) {
        const int64_t n = i == 0 ? row_units(d) : d->ne[i];
        if (n == 1) continue;
        if (nd > 0 && d->nb[i] == x->dn[nd - 1] * x->ne[nd - 1] && s->nb[i] == x->sn[nd - 1] * x->ne[nd - 1]) {
            x->ne[nd - 1] *= n;
            continue;
        }
        x->ne[nd] = n, x->dn[nd] = d->nb[i], x->sn[nd] = s->nb[i];
        nd++;
    }
    for (; nd < 4; nd++) x->ne[nd] = 1, x->dn[nd] = 0, x->sn[nd] = 0;
}

enum { XTILE = 16 }; /* rows read together from a transposed source: one cache line of floats */

/* rows [i1, i1+n) of one outer index (dim 1 rows of n0 units) */
static void xcopy_rows(const xdims *x, char *d, const char *s, int64_t i1, int64_t n, int64_t ub) {
    const int64_t n0 = x->ne[0];
    d += i1 * x->dn[1], s += i1 * x->sn[1];
    if (x->sn[0] == ub && x->dn[0] == ub) {
        for (int64_t r = 0; r < n; r++) copy_bytes(d + r * x->dn[1], s + r * x->sn[1], n0 * ub);
    } else if (x->sn[0] != ub && x->sn[1] == ub) { /* transposed: XTILE rows per pass over dim 0 */
        for (int64_t r = 0; r < n; r += XTILE) {
            const int64_t m = n - r < XTILE ? n - r : XTILE;
            for (int64_t i0 = 0; i0 < n0; i0++) {
                char *dp = d + r * x->dn[1] + i0 * x->dn[0];
                const char *sp = s + r * x->sn[1] + i0 * x->sn[0];
                for (int64_t j = 0; j < m; j++) copy_unit(dp + j * x->dn[1], sp + j * ub, ub);
            }
        }
    } else {
        for (int64_t r = 0; r < n; r++)
            for (int64_t i0 = 0; i0 < n0; i0++)
                copy_unit(d + r * x->dn[1] + i0 * x->dn[0], s + r * x->sn[1] + i0 * x->sn[0], ub);
    }
}

/* d = s, same type and shape (any strides); rows split across threads */
static void xcopy(const gr_tensor *d, const gr_tensor *s, const gr_thread *th) {
    xdims x;
    xdims_init(&x, d, s);
    const int64_t ub = gr_block_bytes(d->type), n1 = x.ne[1];
    int64_t r0, r1;
    if (n1 * x.ne[2] * x.ne[3] == 1) { /* one (merged) row: split it */
        share(x.ne[0], granule(d->type), th, &r0, &r1);
        x.ne[0] = r1 - r0;
        if (r0 < r1) xcopy_rows(&x, d->data + r0 * x.dn[0], s->data + r0 * x.sn[0], 0, 1, ub);
        return;
    }
    gr_chunk(n1 * x.ne[2] * x.ne[3], th->ith, th->nth, &r0, &r1);
    while (r0 < r1) {
        const int64_t o = r0 / n1, i1 = r0 % n1, n = min64(r1 - r0, n1 - i1);
        const int64_t i2 = o % x.ne[2], i3 = o / x.ne[2];
        xcopy_rows(&x, d->data + i2 * x.dn[2] + i3 * x.dn[3], s->data + i2 * x.sn[2] + i3 * x.sn[3], i1, n, ub);
        r0 += n;
    }
}

/* t's memory (contiguous) seen with the shape of `like` */
static gr_tensor reshaped(const gr_tensor *t, const gr_tensor *like) {
    gr_tensor r = *t;
    r.nb[0] = gr_block_bytes(t->type);
    for (int i = 0; i < 4; i++) {
        r.ne[i] = like->ne[i];
        if (i > 0) r.nb[i] = r.nb[i - 1] * (i == 1 ? r.ne[0] / gr_block_elems(t->type) : r.ne[i - 1]);
    }
    return r;
}

/* ======================================================================================
 * same-type copies: cont, dup, cpy without conversion
 * ====================================================================================== */

static int fully_contiguous(const gr_tensor *t) {
    int64_t expect = gr_block_bytes(t->type);
    for (int i = 0; i < 4; i++) {
        if (t->ne[i] != 1 && t->nb[i] != expect) return 0;
        expect *= i == 0 ? row_units(t) : t->ne[i];
    }
    return 1;
}

static int same_shape(const gr_tensor *a, const gr_tensor *b) {
    return a->ne[0] == b->ne[0] && a->ne[1] == b->ne[1] && a->ne[2] == b->ne[2] && a->ne[3] == b->ne[3];
}

/* units [u0, u1) of d's logical sequence from the same units of a: two cursors, for shapes
 * that differ between two non-contiguous tensors */
static void copy_logical(const gr_tensor *d, const gr_tensor *a, const gr_thread *th) {
    const int64_t ub = gr_block_bytes(d->type), n = row_units(d) * gr_nrows(d);
    int64_t u0, u1;
    share(n, granule(d->type), th, &u0, &u1);
    if (u0 >= u1) return;
    cursor cd, ca;
    cur_init(&cd, d, u0);
    cur_init(&ca, a, u0);
    for (int64_t u = u0; u < u1;) {
        const int64_t k = min64(u1 - u, min64(cur_left(&cd), cur_left(&ca)));
        copy_units(cur_ptr(&cd), d->nb[0], cur_ptr(&ca), a->nb[0], k, ub);
        cur_advance(&cd, k);
        cur_advance(&ca, k);
        u += k;
    }
}

/* d = a in logical order (same type): a contiguous side takes the other's shape, so most
 * reshaping copies are same-shape strided copies */
static void copy_same(const gr_tensor *d, const gr_tensor *a, const gr_thread *th) {
    if (same_shape(d, a)) {
        xcopy(d, a, th);
    } else if (fully_contiguous(d)) {
        const gr_tensor r = reshaped(d, a);
        xcopy(&r, a, th);
    } else if (fully_contiguous(a)) {
        const gr_tensor r = reshaped(a, d);
        xcopy(d, &r, th);
    } else {
        copy_logical(d, a, th);
    }
}

/* ======================================================================================
 * converting copies: cpy between plain types, or from a plain type into Q8_0 / Q4_0
 * ====================================================================================== */

/* n floats of a's logical sequence at cursor ca: a's own memory when it is contiguous F32
 * for all n, else converted into tile */
static const float *gather_f32(cursor *ca, int64_t n, float *tile) {
    const gr_tensor *a = ca->t;
    const int64_t es = gr_block_bytes(a->type);
    if (a->type == GR_F32 && a->nb[0] == 4 && cur_left(ca) >= n) {
        const float *p = (const float *)cur_ptr(ca);
        cur_advance(ca, n);
        return p;
    }
    for (int64_t k = 0; k < n;) {
        const int64_t m = min64(n - k, cur_left(ca));
        if (a->nb[0] == es) {
            gr_row_to_f32(cur_ptr(ca), a->type, tile + k, m);
        } else {
            const char *p = cur_ptr(ca);
            for (int64_t j = 0; j < m; j++) tile[k + j] = gr_load_f(p + j * a->nb[0], a->type);
        }
        cur_advance(ca, m);
        k += m;
    }
    return tile;
}

/* n floats into d's row at element c (block types: c and n whole blocks) */
static void put_f32(const gr_tensor *d, char *row, int64_t c, int64_t n, const float *v) {
    const int64_t blk = gr_block_elems(d->type), es = gr_block_bytes(d->type);
    if (blk > 1 || d->nb[0] == es) {
        gr_row_from_f32(v, d->type, row + c / blk * d->nb[0], n);
    } else {
        for (int64_t j = 0; j < n; j++) gr_store_f(row + (c + j) * d->nb[0], d->type, v[j]);
    }
}

static void copy_convert(const gr_tensor *d, const gr_tensor *a, const gr_thread *th) {
    const int64_t ne0 = d->ne[0], n = ne0 * gr_nrows(d);
    int64_t e0, e1;
    share(n, granule(d->type) * gr_block_elems(d->type), th, &e0, &e1);
    if (e0 >= e1) return;
    float tile[TILE];
    cursor ca;
    cur_init(&ca, a, e0);
    while (e0 < e1) {
        int64_t i1, i2, i3;
        gr_unravel_row(d, e0 / ne0, &i1, &i2, &i3);
        char *row = gr_row(d, i1, i2, i3);
        const int64_t c1 = min64(ne0, e1 - e0 + e0 % ne0);
        for (int64_t c = e0 % ne0; c < c1;) {
            const int64_t m = min64(TILE, c1 - c);
            put_f32(d, row, c, m, gather_f32(&ca, m, tile));
            c += m;
            e0 += m;
        }
    }
}

void gr_k_cont(const gr_op *op, const gr_thread *th) { copy_same(&op->dst, &op->src[0], th); }
void gr_k_dup(const gr_op *op, const gr_thread *th) { copy_same(&op->dst, &op->src[0], th); }

void gr_k_cpy(const gr_op *op, const gr_thread *th) {
    if (op->src[0].type == op->dst.type)
        copy_same(&op->dst, &op->src[0], th);
    else
        copy_convert(&op->dst, &op->src[0], th);
}

/* ======================================================================================
 * repeat: a tiled over dst (every dim of dst a multiple of a's), any type as units
 * ====================================================================================== */

void gr_k_repeat(const gr_op *op, const gr_thread *th) {
    const gr_tensor *d = &op->dst, *a = &op->src[0];
    const int64_t ub = gr_block_bytes(d->type), du = row_units(d), au = row_units(a);
    int64_t u0, u1;
    share(du * gr_nrows(d), granule(d->type), th, &u0, &u1);
    while (u0 < u1) {
        int64_t i1, i2, i3;
        gr_unravel_row(d, u0 / du, &i1, &i2, &i3);
        char *drow = gr_row(d, i1, i2, i3);
        const char *arow = gr_row(a, i1 % a->ne[1], i2 % a->ne[2], i3 % a->ne[3]);
        const int64_t c1 = min64(du, u1 - u0 + u0 % du);
        for (int64_t c = u0 % du; c < c1;) {
            const int64_t j = c % au, k = min64(c1 - c, au - j);
            copy_units(drow + c * d->nb[0], d->nb[0], arow + j * a->nb[0], a->nb[0], k, ub);
            c += k;
            u0 += k;
        }
    }
}

/* ======================================================================================
 * get_rows: dst[:, i, i2, i3] = a[:, b[i, i2, i3], i2, i3] as F32 (I32 stays I32)
 * ====================================================================================== */

static int32_t index_at(const gr_tensor *t, int64_t i0, int64_t i1, int64_t i2) {
    int32_t v;
    memcpy(&v, gr_ptr(t, i0, i1, i2, 0), 4);
    return v;
}

/* elements [c, c+n) of a source row (any type; block types: whole blocks) into a dst row */
static void row_to_dst(const gr_tensor *d, char *drow, const gr_tensor *a, const char *arow, int64_t c, int64_t n) {
    const int64_t blk = gr_block_elems(a->type), es = gr_block_bytes(a->type);
    if (a->type == d->type) { /* I32 -> I32, exact */
        copy_units(drow + c * d->nb[0], d->nb[0], arow + c * a->nb[0], a->nb[0], n, es);
        return;
    }
    float tile[TILE];
    for (int64_t k = 0; k < n;) {
        const int64_t m = min64(TILE, n - k);
        const int64_t ck = c + k;
        float *y = d->type == GR_F32 && d->nb[0] == 4 ? (float *)drow + ck : tile;
        if (blk > 1 || a->nb[0] == es) {
            gr_row_to_f32(arow + ck / blk * a->nb[0], a->type, y, m);
        } else {
            for (int64_t j = 0; j < m; j++) y[j] = gr_load_f(arow + (ck + j) * a->nb[0], a->type);
        }
        if (y == tile) put_f32(d, drow, ck, m, tile);
        k += m;
    }
}

void gr_k_get_rows(const gr_op *op, const gr_thread *th) {
    const gr_tensor *d = &op->dst, *a = &op->src[0], *b = &op->src[1];
    const int64_t ne0 = d->ne[0], blk = gr_block_elems(a->type);
    int64_t e0, e1;
    share(ne0 * gr_nrows(d), blk > 1 ? blk : 64, th, &e0, &e1);
    while (e0 < e1) {
        int64_t i, i2, i3;
        gr_unravel_row(d, e0 / ne0, &i, &i2, &i3);
        const int64_t c0 = e0 % ne0, c1 = min64(ne0, e1 - e0 + c0);
        char *drow = gr_row(d, i, i2, i3);
        const int32_t r = index_at(b, i, i2, i3);
        if (r >= 0 && r < a->ne[1]) {
            row_to_dst(d, drow, a, gr_row(a, r, i2, i3), c0, c1 - c0);
        } else { /* NOTE: the reference raises; here the row reads as NaN (0 for I32) */
            for (int64_t c = c0; c < c1; c++) gr_store_f(drow + c * d->nb[0], d->type, d->type == GR_I32 ? 0 : NAN);
        }
        e0 += c1 - c0;
    }
}

/* ======================================================================================
 * set_rows: a[:, c[i, i2 % c.ne1, i3 % c.ne2], i2, i3] = b[:, i, i2, i3], converted to a's type
 * ====================================================================================== */

/* columns [c0, c1) of every row of planes [p0, p1), rows in order: where an index repeats
 * within a plane the last row wins, as in ggml's sequential loop */
static void set_rows_part(const gr_op *op, int64_t p0, int64_t p1, int64_t c0, int64_t c1) {
    const gr_tensor *d = &op->dst, *b = &op->src[1], *c = &op->src[2];
    const int64_t es = gr_block_bytes(d->type);
    for (int64_t p = p0; p < p1; p++) {
        const int64_t i2 = p % b->ne[2], i3 = p / b->ne[2];
        for (int64_t i = 0; i < b->ne[1]; i++) {
            const int32_t r = index_at(c, i, i2 % c->ne[1], i3 % c->ne[2]);
            if (r < 0 || r >= d->ne[1]) continue; /* NOTE: the reference raises; never write outside */
            char *drow = gr_row(d, r, i2, i3) + c0 * d->nb[0];
            const char *brow = gr_row(b, i, i2, i3) + c0 * b->nb[0];
            if (b->nb[0] == 4 && d->nb[0] == es) {
                gr_row_from_f32((const float *)brow, d->type, drow, c1 - c0);
            } else {
                for (int64_t j = 0; j < c1 - c0; j++)
                    gr_store_f(drow + j * d->nb[0], d->type, *(const float *)(brow + j * b->nb[0]));
            }
        }
    }
}

void gr_k_set_rows(const gr_op *op, const gr_thread *th) {
    const gr_tensor *b = &op->src[1];
    const int64_t planes = b->ne[2] * b->ne[3], ne0 = b->ne[0];
    int64_t s0, s1;
    if (planes >= th->nth) { /* whole planes: they write disjoint rows */
        gr_chunk(planes, th->ith, th->nth, &s0, &s1);
        set_rows_part(op, s0, s1, 0, ne0);
    } else { /* column ranges: each thread keeps every row's order */
        share(ne0, 64, th, &s0, &s1);
        if (s0 < s1) set_rows_part(op, 0, planes, s0, s1);
    }
}

/* ======================================================================================
 * concat along dim: dst[.., j, ..] = a's for j < a.ne[dim], else b's at j - a.ne[dim]
 * ====================================================================================== */

void gr_k_concat(const gr_op *op, const gr_thread *th) {
    const gr_tensor *d = &op->dst, *a = &op->src[0], *b = &op->src[1];
    const int dim = op->ip[0];
    gr_tensor da = *d, db = *d; /* the parts of dst that a and b fill */
    for (int i = 0; i < 4; i++) da.ne[i] = a->ne[i], db.ne[i] = b->ne[i];
    db.data += a->ne[dim] * d->nb[dim];
    xcopy(&da, a, th); /* disjoint parts: no barrier between them */
    xcopy(&db, b, th);
}
