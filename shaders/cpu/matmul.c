/* mul_mat and mul_mat_id: weights in their GGUF type, activations converted once per row.
 *
 * Phase 1: the threads convert the rows of b into the weights' dot-product format (matmul.h)
 * in the op's scratch (F32 rows of b that are already contiguous are read in place), then meet
 * at a barrier; with at most PRIVATE_ROWS rows of b (decode) every thread converts them all
 * into its own part of the scratch instead, and no thread waits for another.
 *
 * Phase 2: the output is cut into units of RB weight rows x up to NB activation rows (per b
 * matrix); each thread takes a contiguous run of units, so a decode (one activation
 * row) has every thread streaming its own contiguous range of weight rows. A unit runs its
 * token tiles (up to ct activation rows) one after the other, each over all the unit's rows,
 * so each weight block loaded is used for every token of a tile and the unit's rows are read
 * from memory once. While the unit's tokens fit one tile (decode, verify batches) a tile is ONE
 * weight row: rows are then read strictly in address order, which the hardware prefetcher
 * streams 2-4x faster here than several interleaved rows; larger batches are compute-bound: the
 * first token tile still reads the rows one at a time, the others take rt rows per tile
 * (activation loads shared) from cache.
 *
 * Every output element is one dot product in the canonical order of its weight type (matmul.h)
 * whatever the tile, the unit or the thread: results are batch-invariant bit for bit.
 */
#include "matmul.h"

#define RB 16 /* weight rows per unit: one group of repacked Q8_0 / Q4_0 weights (matmul.h) */
_Static_assert(RB % GR_R16 == 0, "a unit starts on a group of repacked rows");
#define NB 64 /* most activation rows per unit */
#define NB_BYTES (256 << 10) /* a unit's activation rows stay in L2: at most this many bytes of them */
#define PRIVATE_ROWS 2 /* up to this many rows of b, each thread converts its own copy */

static int act_kind(int wtype) {
    switch (wtype) {
    case GR_Q8_0: case GR_Q4_0: return GR_ACT_Q8;
    case GR_Q4_K: case GR_Q5_K: case GR_Q6_K: return GR_ACT_Q8K;
    case GR_Q8_0_R16: case GR_Q4_0_R16: return GR_ACT_Q8R;
    default: return GR_ACT_F32;
    }
}

/* b read in place: F32 rows already contiguous and the weights want F32 */
static int act_in_place(int wtype, const gr_tensor *b) {
    return act_kind(wtype) == GR_ACT_F32 && b->type == GR_F32 && b->nb[0] == 4;
}

static int64_t act_bytes(int wtype, const gr_tensor *b) {
    return act_in_place(wtype, b) ? 0 : gr_nrows(b) * gr_act_row_bytes(act_kind(wtype), b->ne[0]);
}

/* every thread its own converted copy of b (and its own expert lists) */
static int act_private(int wtype, const gr_tensor *b) { return gr_nrows(b) <= PRIVATE_ROWS; }

/* the scratch part this thread reads (private parts are `part` bytes apart) */
static char *scratch_of(const gr_op *op, int64_t part, const gr_thread *th) {
    return op->wdata + (act_private(op->src[0].type, &op->src[1]) ? th->ith * part : 0);
}

/* rows [r0, r1) of b into the scratch (row r of b at r * row bytes) */
static void convert_rows(const gr_tensor *b, int wtype, char *base, int64_t r0, int64_t r1) {
    int act = act_kind(wtype);
    int64_t rb = gr_act_row_bytes(act, b->ne[0]);
    for (int64_t r = r0; r < r1; r++) {
        int64_t i1, i2, i3;
        gr_unravel_row(b, r, &i1, &i2, &i3);
        gr_act_row(gr_row(b, i1, i2, i3), b->type, b->nb[0], b->ne[0], act, base + r * rb);
    }
}

/* Phase 1 of a thread: its share of the rows of b (all of them when private) */
static void convert_b(const gr_op *op, char *base, const gr_thread *th) {
    const gr_tensor *b = &op->src[1];
    int wtype = op->src[0].type;
    int64_t r0 = 0, r1 = gr_nrows(b);
    if (act_in_place(wtype, b)) return;
    if (!act_private(wtype, b)) gr_chunk(gr_nrows(b), th->ith, th->nth, &r0, &r1);
    convert_rows(b, wtype, base, r0, r1);
}

/* activation row (i1, i2, i3) of b: in place or its converted copy at base */
static const char *act_row(const gr_tensor *b, int wtype, const char *base, int64_t i1, int64_t i2, int64_t i3) {
    if (act_in_place(wtype, b)) return gr_row(b, i1, i2, i3);
    int64_t r = i1 + b->ne[1] * (i2 + b->ne[2] * i3);
    return base + r * gr_act_row_bytes(act_kind(wtype), b->ne[0]);
}

/* activation rows per unit: NB, fewer for long rows (a multiple of the kernel's ct) */
static int64_t unit_tokens(int wtype, const gr_tensor *b, const gr_mm_kernel *k) {
    int64_t row = act_in_place(wtype, b) ? b->ne[0] * 4 : gr_act_row_bytes(act_kind(wtype), b->ne[0]);
    int64_t n = row > 0 ? NB_BYTES / row / k->ct * k->ct : NB;
    return n < k->ct ? k->ct : n > NB ? NB : n;
}

/* A unit: nrows weight rows at w (stride ws; output rows r0 ..) x n activation rows. Up to ct1
 * tokens (decode, verify batches) take one pass of one-row tiles. Otherwise, cold (the rows are
 * not in cache yet: the unit's first token block), the first ct1 tokens read the rows one row
 * per tile, in address order; the other tokens find them in cache and take rt rows per tile. */
static void run_unit(const gr_mm_kernel *k, int64_t K, const char *w, int64_t ws, int64_t nrows, int64_t r0,
                     const char *const *act, float *const *out, int64_t n, int cold) {
    int64_t c = 0;
    if (n <= k->ct1 || cold) {
        c = n < k->ct1 ? n : k->ct1;
        (c == 1 && k->stream1 ? k->stream1 : k->tiles[0][c - 1])(K, w, ws, nrows, act, out, r0);
    }
    for (; c < n; c += k->ct) {
        int nc = (int)(n - c < k->ct ? n - c : k->ct);
        int64_t full = nrows / k->rt * k->rt;
        if (full) k->tiles[k->rt - 1][nc - 1](K, w, ws, full, act + c, out + c, r0);
        if (nrows > full) k->tiles[nrows - full - 1][nc - 1](K, w + full * ws, ws, nrows - full, act + c, out + c, r0 + full);
    }
}

/* ================================ mul_mat ================================ */

int64_t gr_w_mul_mat(const gr_op *op, int nth) {
    const gr_tensor *b = &op->src[1];
    int wtype = op->src[0].type;
    return act_bytes(wtype, b) * (act_private(wtype, b) ? nth : 1);
}

/* Units: (b matrix, weight row block, activation row block), activation row block fastest. */
static void mul_mat_unit(const gr_op *op, const gr_mm_kernel *k, const char *base, int64_t nb, int64_t u) {
    const gr_tensor *a = &op->src[0], *b = &op->src[1], *d = &op->dst;
    int64_t M = a->ne[1], N = b->ne[1];
    int64_t nrb = (M + RB - 1) / RB, ntb = (N + nb - 1) / nb;
    int64_t tb = u % ntb, rb = u / ntb % nrb, bi = u / (ntb * nrb);
    int64_t i2 = bi % b->ne[2], i3 = bi / b->ne[2];
    /* a broadcasts over dims 2, 3: each a matrix serves r2 (r3) consecutive b matrices */
    int64_t r2 = b->ne[2] / a->ne[2], r3 = b->ne[3] / a->ne[3];
    const char *w = a->data + (i2 / r2) * a->nb[2] + (i3 / r3) * a->nb[3];
    int64_t m0 = rb * RB, m1 = m0 + RB < M ? m0 + RB : M, n0 = tb * nb, n1 = n0 + nb < N ? n0 + nb : N;
    const char *act[NB];
    float *out[NB];
    for (int64_t n = n0; n < n1; n++) {
        act[n - n0] = act_row(b, a->type, base, n, i2, i3);
        out[n - n0] = (float *)gr_row(d, n, i2, i3);
    }
    run_unit(k, a->ne[0], w + m0 * a->nb[1], a->nb[1], m1 - m0, m0, act, out, n1 - n0, tb == 0);
}

/* the kernel for weights `a`; its streaming one-token tile only for a matrix that does not stay in cache */
static gr_mm_kernel kernel_for(const gr_tensor *a) {
    gr_mm_kernel k = gr_mm_kernel_for(a->type);
    if (a->ne[1] * a->nb[1] < GR_MM_STREAM_BYTES) k.stream1 = NULL;
    return k;
}

void gr_k_mul_mat(const gr_op *op, const gr_thread *th) {
    const gr_tensor *a = &op->src[0], *b = &op->src[1];
    gr_mm_kernel k = kernel_for(a);
    char *base = scratch_of(op, act_bytes(a->type, b), th);
    convert_b(op, base, th);
    if (!act_in_place(a->type, b) && !act_private(a->type, b)) gr_barrier(th);
    int64_t nb = unit_tokens(a->type, b, &k), nrb = (a->ne[1] + RB - 1) / RB, ntb = (b->ne[1] + nb - 1) / nb;
    int64_t u0, u1;
    gr_chunk(b->ne[2] * b->ne[3] * nrb * ntb, th->ith, th->nth, &u0, &u1);
    for (int64_t u = u0; u < u1; u++) mul_mat_unit(op, &k, base, nb, u);
}

/* ================================ mul_mat_id ================================
 * as [K, M, n_expert], b [K, n_b1, n_tokens], ids [n_used, n_tokens] -> dst [M, n_used, n_tokens]:
 * dst[:, e, t] = as[:, :, ids[e, t]] . b[:, e % n_b1, t]. The (e, t) pairs of each expert are
 * listed (by thread 0 during phase 1, or by every thread for itself when b is private) and each
 * expert's weights are tiled over its own pairs.
 * An id out of range (the reference raises) leaves its output row zero. */

typedef struct {
    int32_t *start; /* [n_expert + 1]: pairs of expert x at list[start[x] .. start[x + 1]) */
    int32_t *list;  /* e + n_used * t */
} id_lists;

static int64_t lists_bytes(const gr_op *op) {
    const gr_tensor *ids = &op->src[2];
    return 4 * (op->src[0].ne[2] + 1 + ids->ne[0] * ids->ne[1]);
}

/* the lists follow the converted b in this thread's scratch part */
static id_lists lists_at(const gr_op *op, const char *base) {
    int32_t *p = (int32_t *)(base + act_bytes(op->src[0].type, &op->src[1]));
    id_lists l = {p, p + op->src[0].ne[2] + 1};
    return l;
}

/* converted b, then the lists (act_bytes is a multiple of 64) */
static int64_t id_part(const gr_op *op) {
    return act_bytes(op->src[0].type, &op->src[1]) + (lists_bytes(op) + 63) / 64 * 64;
}

int64_t gr_w_mul_mat_id(const gr_op *op, int nth) {
    return id_part(op) * (act_private(op->src[0].type, &op->src[1]) ? nth : 1);
}

static int32_t id_at(const gr_tensor *ids, int64_t e, int64_t t) {
    return *(const int32_t *)(ids->data + e * ids->nb[0] + t * ids->nb[1]);
}

static void build_lists(const gr_op *op, const char *base, int write_zeros) {
    const gr_tensor *ids = &op->src[2];
    int64_t n_expert = op->src[0].ne[2], n_used = ids->ne[0], n_tokens = ids->ne[1];
    id_lists l = lists_at(op, base);
    memset(l.start, 0, 4 * (size_t)(n_expert + 1));
    for (int64_t t = 0; t < n_tokens; t++)
        for (int64_t e = 0; e < n_used; e++) {
            int32_t x = id_at(ids, e, t);
            if (x >= 0 && x < n_expert) l.start[x + 1]++;
        }
    for (int64_t x = 0; x < n_expert; x++) l.start[x + 1] += l.start[x];
    for (int64_t t = 0; t < n_tokens; t++)
        for (int64_t e = 0; e < n_used; e++) {
            int32_t x = id_at(ids, e, t);
            if (x >= 0 && x < n_expert) l.list[l.start[x]++] = (int32_t)(e + n_used * t);
            else if (write_zeros) memset(gr_row(&op->dst, e, t, 0), 0, (size_t)(op->dst.ne[0] * 4));
        }
    for (int64_t x = n_expert; x > 0; x--) l.start[x] = l.start[x - 1]; /* undo the fill's advance */
    l.start[0] = 0;
}

static void mul_mat_id_unit(const gr_op *op, const gr_mm_kernel *k, const char *base, int64_t nb, int64_t x,
                            int64_t rb, int64_t tb) {
    const gr_tensor *as = &op->src[0], *b = &op->src[1], *d = &op->dst;
    id_lists l = lists_at(op, base);
    const int32_t *pairs = l.list + l.start[x];
    int64_t M = as->ne[1], count = l.start[x + 1] - l.start[x], n_used = op->src[2].ne[0];
    int64_t m0 = rb * RB, m1 = m0 + RB < M ? m0 + RB : M, n0 = tb * nb, n1 = n0 + nb < count ? n0 + nb : count;
    const char *w = as->data + x * as->nb[2];
    const char *act[NB];
    float *out[NB];
    for (int64_t n = n0; n < n1; n++) {
        int64_t e = pairs[n] % n_used, t = pairs[n] / n_used;
        act[n - n0] = act_row(b, as->type, base, e % b->ne[1], t, 0);
        out[n - n0] = (float *)gr_row(d, e, t, 0);
    }
    run_unit(k, as->ne[0], w + m0 * as->nb[1], as->nb[1], m1 - m0, m0, act, out, n1 - n0, tb == 0);
}

void gr_k_mul_mat_id(const gr_op *op, const gr_thread *th) {
    const gr_tensor *as = &op->src[0], *b = &op->src[1];
    gr_mm_kernel k = kernel_for(as);
    int priv = act_private(as->type, b);
    char *base = scratch_of(op, id_part(op), th);
    convert_b(op, base, th);
    if (priv || th->ith == 0) build_lists(op, base, th->ith == 0);
    if (!priv) gr_barrier(th);
    id_lists l = lists_at(op, base);
    int64_t n_expert = as->ne[2], nb = unit_tokens(as->type, b, &k), nrb = (as->ne[1] + RB - 1) / RB, units = 0;
    for (int64_t x = 0; x < n_expert; x++) units += nrb * ((l.start[x + 1] - l.start[x] + nb - 1) / nb);
    int64_t u0, u1, u = 0;
    gr_chunk(units, th->ith, th->nth, &u0, &u1);
    for (int64_t x = 0; x < n_expert && u < u1; x++) {
        int64_t ntb = (l.start[x + 1] - l.start[x] + nb - 1) / nb;
        for (int64_t rb = 0; rb < nrb; rb++)
            for (int64_t tb = 0; tb < ntb; tb++, u++)
                if (u >= u0 && u < u1) mul_mat_id_unit(op, &k, base, nb, x, rb, tb);
    }
}
