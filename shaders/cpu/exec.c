/* The split runner: a persistent thread pool walks an array of op records; every thread runs
 * its share of each op and meets the others at a barrier after it.
 *
 * Waiting (for the next split, at a barrier) spins briefly, then sleeps on a futex: pure
 * spinning collapses on a shared machine with as many busy threads as cores.
 */
#define _GNU_SOURCE
#include "graphir_cpu.h"

#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>

#define GR_MAX_THREADS 256

/* ---- the dispatch table (weak kernels: NULL when the op's family is not compiled in) ---- */
#define K(NAME, name) [GR_OP_##NAME] = gr_k_##name
static gr_kernel const KERNELS[GR_OP_COUNT] = {
    K(CONT, cont), K(CPY, cpy), K(DUP, dup),
    K(ADD, add), K(SUB, sub), K(MUL, mul), K(DIV, div), K(SCALE, scale),
    K(SQR, sqr), K(SQRT, sqrt), K(EXP, exp), K(NEG, neg), K(SIGMOID, sigmoid), K(SILU, silu),
    K(SOFTPLUS, softplus), K(GELU, gelu), K(CLAMP, clamp), K(REPEAT, repeat),
    K(SUM_ROWS, sum_rows), K(MEAN, mean), K(RMS_NORM, rms_norm), K(L2_NORM, l2_norm),
    K(SOFT_MAX, soft_max), K(ARGMAX, argmax), K(ARGSORT, argsort), K(TOP_K, top_k),
    K(GET_ROWS, get_rows), K(SET_ROWS, set_rows), K(CONCAT, concat),
    K(MUL_MAT, mul_mat), K(MUL_MAT_ID, mul_mat_id),
    K(ROPE, rope), K(FLASH_ATTN_EXT, flash_attn_ext),
    K(SSM_CONV, ssm_conv), K(GATED_DELTA_NET, gated_delta_net),
};
#undef K
#define W(NAME, name) [GR_OP_##NAME] = gr_w_##name
static gr_wsize_fn const WSIZE[GR_OP_COUNT] = {
    W(CONT, cont), W(CPY, cpy), W(DUP, dup),
    W(ADD, add), W(SUB, sub), W(MUL, mul), W(DIV, div), W(SCALE, scale),
    W(SQR, sqr), W(SQRT, sqrt), W(EXP, exp), W(NEG, neg), W(SIGMOID, sigmoid), W(SILU, silu),
    W(SOFTPLUS, softplus), W(GELU, gelu), W(CLAMP, clamp), W(REPEAT, repeat),
    W(SUM_ROWS, sum_rows), W(MEAN, mean), W(RMS_NORM, rms_norm), W(L2_NORM, l2_norm),
    W(SOFT_MAX, soft_max), W(ARGMAX, argmax), W(ARGSORT, argsort), W(TOP_K, top_k),
    W(GET_ROWS, get_rows), W(SET_ROWS, set_rows), W(CONCAT, concat),
    W(MUL_MAT, mul_mat), W(MUL_MAT_ID, mul_mat_id),
    W(ROPE, rope), W(FLASH_ATTN_EXT, flash_attn_ext),
    W(SSM_CONV, ssm_conv), W(GATED_DELTA_NET, gated_delta_net),
};
#undef W

int gr_op_supported(int opcode) {
    return opcode > GR_OP_NONE && opcode < GR_OP_COUNT && KERNELS[opcode] != NULL;
}

int64_t gr_op_wsize(const gr_op *op, int n_threads) {
    gr_wsize_fn f = WSIZE[op->op];
    return f ? f(op, n_threads) : 0;
}

/* ---- instruction-set selection ---- */
int gr_has_avx2, gr_has_avx512, gr_has_vnni;
static int isa_cap = 7; /* gr_set_isa lowers it (tests of the portable and AVX2 paths) */

static void detect_isa(void) {
    __builtin_cpu_init();
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    int avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
    int vnni = avx512 && __builtin_cpu_supports("avx512vnni");
    gr_has_avx2 = avx2 && (isa_cap & 1);
    gr_has_avx512 = avx512 && (isa_cap & 2);
    gr_has_vnni = vnni && (isa_cap & 4);
}

int gr_isa(void) { return gr_has_avx2 | (gr_has_avx512 << 1) | (gr_has_vnni << 2); }

int gr_set_isa(int mask) {
    isa_cap = mask;
    detect_isa();
    return gr_isa();
}

/* ---- futex waiting ---- */
static int spin_iters = 20000; /* ~10-40 us of pause before sleeping; GRAPHIR_SPIN overrides */

static void futex_wait(atomic_int *addr, int val) {
    syscall(SYS_futex, (int *)addr, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
}
static void futex_wake(atomic_int *addr) {
    syscall(SYS_futex, (int *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}
static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

/* wait until *addr != old: spin, then sleep (sleepers counted so wakers skip the syscall) */
static void wait_change(atomic_int *addr, int old, atomic_int *sleepers) {
    for (int i = 0; i < spin_iters; i++) {
        if (atomic_load_explicit(addr, memory_order_acquire) != old) return;
        cpu_relax();
    }
    atomic_fetch_add(sleepers, 1);
    while (atomic_load(addr) == old) futex_wait(addr, old);
    atomic_fetch_sub(sleepers, 1);
}
static void bump(atomic_int *addr, atomic_int *sleepers) {
    atomic_fetch_add(addr, 1);
    if (atomic_load(sleepers) > 0) futex_wake(addr);
}

/* ---- the pool ---- */
struct gr_pool {
    int n_workers;
    pthread_t threads[GR_MAX_THREADS];
    /* the current job, published by bumping job_gen */
    gr_op *ops;
    int n_ops, nth;
    atomic_int job_gen, job_sleepers;
    /* barrier */
    atomic_int bar_count, bar_gen, bar_sleepers;
};

static struct gr_pool pool;
static pthread_mutex_t run_lock = PTHREAD_MUTEX_INITIALIZER; /* one split at a time */
static pthread_once_t init_once = PTHREAD_ONCE_INIT;

void gr_barrier(const gr_thread *th) {
    if (th->nth <= 1) return;
    struct gr_pool *p = th->pool;
    int gen = atomic_load(&p->bar_gen);
    if (atomic_fetch_add(&p->bar_count, 1) == th->nth - 1) {
        atomic_store(&p->bar_count, 0);
        bump(&p->bar_gen, &p->bar_sleepers);
        return;
    }
    wait_change(&p->bar_gen, gen, &p->bar_sleepers);
}

static void run_ops(gr_op *ops, int n_ops, const gr_thread *th) {
    for (int i = 0; i < n_ops; i++) {
        KERNELS[ops[i].op](&ops[i], th);
        gr_barrier(th);
    }
}

static void *worker(void *arg) {
    int ith = (int)(intptr_t)arg;
    int seen = 0;
    for (;;) {
        wait_change(&pool.job_gen, seen, &pool.job_sleepers);
        seen = atomic_load(&pool.job_gen);
        int nth = pool.nth, n_ops = pool.n_ops;
        if (ith < nth) {
            gr_thread th = {ith, nth, &pool};
            run_ops(pool.ops, n_ops, &th);
        }
    }
    return NULL;
}

static int grow_pool(int n_workers) {
    while (pool.n_workers < n_workers) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 8u << 20);
        int err = pthread_create(&pool.threads[pool.n_workers], &attr, worker, (void *)(intptr_t)(pool.n_workers + 1));
        pthread_attr_destroy(&attr);
        if (err) return err;
        pthread_detach(pool.threads[pool.n_workers]);
        pool.n_workers++;
    }
    return 0;
}

static void init_once_fn(void) {
    const char *s = getenv("GRAPHIR_SPIN");
    if (s) spin_iters = atoi(s);
    detect_isa();
    gr_init_tables();
}

void gr_init(void) { pthread_once(&init_once, init_once_fn); }

/* Run n_ops records with n_threads threads (the caller is thread 0). Returns 0, or an errno
 * when worker threads cannot be created (then nothing ran). */
int gr_run(gr_op *ops, int n_ops, int n_threads) {
    gr_init();
    if (n_threads < 1) n_threads = 1;
    if (n_threads > GR_MAX_THREADS) n_threads = GR_MAX_THREADS;
    for (int i = 0; i < n_ops; i++)
        if (!gr_op_supported(ops[i].op)) return EINVAL;
    pthread_mutex_lock(&run_lock);
    int err = grow_pool(n_threads - 1);
    if (err) {
        pthread_mutex_unlock(&run_lock);
        return err;
    }
    gr_thread th = {0, n_threads, &pool};
    if (n_threads > 1) {
        pool.ops = ops;
        pool.n_ops = n_ops;
        pool.nth = n_threads;
        bump(&pool.job_gen, &pool.job_sleepers);
    }
    run_ops(ops, n_ops, &th); /* the last barrier: every thread is done with the job */
    pthread_mutex_unlock(&run_lock);
    return 0;
}
