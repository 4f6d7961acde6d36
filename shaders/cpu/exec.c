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
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define GR_MAX_THREADS 256

/* ---- the dispatch table (weak kernels: NULL when the op's family is not compiled in) ---- */
#define K(NAME, name) [GR_OP_##NAME] = gr_k_##name,
static gr_kernel const KERNELS[GR_OP_COUNT] = {GR_FOR_EACH_OP(K)};
#undef K
#define W(NAME, name) [GR_OP_##NAME] = gr_w_##name,
static gr_wsize_fn const WSIZE[GR_OP_COUNT] = {GR_FOR_EACH_OP(W)};
#undef W

int gr_op_supported(int opcode) {
    return opcode > GR_OP_NONE && opcode < GR_OP_COUNT && KERNELS[opcode] != NULL;
}

int64_t gr_op_wsize(const gr_op *op, int n_threads) {
    gr_wsize_fn f = WSIZE[op->op];
    return f ? f(op, n_threads) : 0;
}

/* The whole pages inside [p, p + n) leave this process's resident memory (madvise
 * MADV_DONTNEED). Only for read-only file mappings (the caller checks): their pages come back
 * from the file on the next touch. Returns 0, or errno. */
int gr_drop_pages(const void *p, int64_t n) {
    long page = sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)p + (uintptr_t)page - 1) / (uintptr_t)page * (uintptr_t)page;
    uintptr_t b = ((uintptr_t)p + (uintptr_t)n) / (uintptr_t)page * (uintptr_t)page;
    if (n <= 0 || page <= 0 || b <= a) return 0;
    return madvise((void *)a, b - a, MADV_DONTNEED) ? errno : 0;
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

static double *run_times; /* gr_run_timed: thread 0 stamps the end of each op here (under run_lock) */

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static void run_ops(gr_op *ops, int n_ops, const gr_thread *th) {
    double *times = th->ith == 0 ? run_times : NULL;
    for (int i = 0; i < n_ops; i++) {
        KERNELS[ops[i].op](&ops[i], th);
        gr_barrier(th);
        if (times) times[i] = now_s();
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

static int run(gr_op *ops, int n_ops, int n_threads, double *times);

/* Run n_ops records with n_threads threads (the caller is thread 0). Returns 0, or an errno
 * when worker threads cannot be created (then nothing ran). */
int gr_run(gr_op *ops, int n_ops, int n_threads) { return run(ops, n_ops, n_threads, NULL); }

/* gr_run, with times[i] the seconds op i took (from the end of op i - 1, or the start, to the
 * barrier after it: its slowest thread and the barrier), for profiling a whole split as it runs. */
int gr_run_timed(gr_op *ops, int n_ops, int n_threads, double *times) {
    if (n_ops < 1) return gr_run(ops, n_ops, n_threads);
    double t0 = now_s();
    int err = run(ops, n_ops, n_threads, times);
    if (err) return err;
    for (int i = n_ops - 1; i > 0; i--) times[i] -= times[i - 1];
    times[0] -= t0;
    return 0;
}

static int run(gr_op *ops, int n_ops, int n_threads, double *times) {
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
    run_times = times;
    if (n_threads > 1) {
        pool.ops = ops;
        pool.n_ops = n_ops;
        pool.nth = n_threads;
        bump(&pool.job_gen, &pool.job_sleepers);
    }
    run_ops(ops, n_ops, &th); /* the last barrier: every thread is done with the job */
    run_times = NULL;
    pthread_mutex_unlock(&run_lock);
    return 0;
}
