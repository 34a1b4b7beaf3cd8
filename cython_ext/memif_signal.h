/* Eventfd signalling that can never block the calling thread.
 *
 * A memif ring's interrupt eventfd is shared with the peer: the open file description (and so
 * O_NONBLOCK) and the counter belong to both processes. A hostile peer can clear O_NONBLOCK and
 * fill the counter to 2^64-2, and then a plain write() of 1 sleeps until someone reads, which a
 * hostile peer never does. Two ways out, chosen once per process:
 *
 *  1. io_uring with RWF_NOWAIT. io_uring honours IOCB_NOWAIT on files that only implement
 *     ->write (eventfd does) by refusing with -EAGAIN when the file is blocking, instead of
 *     sleeping; on a non-blocking file the write runs inline, in the submitting syscall. So a
 *     submission either signals at once or completes with -EAGAIN at once; nothing waits.
 *     Probed at start-up (old kernels refuse every such write; containers may forbid
 *     io_uring_setup).
 *  2. Otherwise one helper thread per signaller does the writes: the loop thread only flags a
 *     slot and pokes a private eventfd nobody else holds. A peer can then stall the helper,
 *     never the loop; stopping the helper frees it from a stalled write by draining the counter
 *     with a read that cannot sleep (preadv2 RWF_NOWAIT, which eventfd supports for reads).
 *
 * The io_uring ABI structs are declared here (not taken from <linux/io_uring.h>) so the module
 * builds against old kernel headers (manylinux images); they are part of the stable kernel ABI.
 * The helper thread is started through CPython's PyThread API (detached), not pthread_create
 * directly: glibc 2.34 re-versioned pthread_create/join/detach, and one reference to them
 * would make the wheel need glibc 2.34 (manylinux_2_34) instead of 2.28.
 */
#ifndef MEMIF_SIGNAL_H
#define MEMIF_SIGNAL_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include "Python.h" /* PyThread_start_new_thread */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#endif
#ifndef __NR_io_uring_enter
#define __NR_io_uring_enter 426
#endif
#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

#define MEMIF_IORING_OP_WRITE 23
#define MEMIF_IORING_FEAT_SINGLE_MMAP 1u
#define MEMIF_IORING_OFF_SQ_RING 0ULL
#define MEMIF_IORING_OFF_SQES 0x10000000ULL

struct memif_sqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, flags, dropped, array, resv1;
    uint64_t user_addr;
};
struct memif_cqring_offsets {
    uint32_t head, tail, ring_mask, ring_entries, overflow, cqes, flags, resv1;
    uint64_t user_addr;
};
struct memif_uring_params {
    uint32_t sq_entries, cq_entries, flags, sq_thread_cpu, sq_thread_idle, features, wq_fd;
    uint32_t resv[3];
    struct memif_sqring_offsets sq_off;
    struct memif_cqring_offsets cq_off;
};
struct memif_sqe {
    uint8_t opcode;
    uint8_t flags;
    uint16_t ioprio;
    int32_t fd;
    uint64_t off;
    uint64_t addr;
    uint32_t len;
    uint32_t rw_flags;
    uint64_t user_data;
    uint64_t pad[3];
};
struct memif_cqe {
    uint64_t user_data;
    int32_t res;
    uint32_t flags;
};
_Static_assert(sizeof(struct memif_uring_params) == 120, "io_uring_params is 120 bytes");
_Static_assert(sizeof(struct memif_sqe) == 64, "io_uring_sqe is 64 bytes");
_Static_assert(sizeof(struct memif_cqe) == 16, "io_uring_cqe is 16 bytes");

static const uint64_t memif_signal_one = 1;

typedef struct {
    int fd;
    void *ring_map;
    size_t ring_len;
    void *sqe_map;
    size_t sqe_len;
    uint32_t *sq_tail, *sq_mask, *sq_array;
    uint32_t *cq_head, *cq_tail, *cq_mask;
    struct memif_sqe *sqes;
    struct memif_cqe *cqes;
} memif_uring;

static void memif_uring_close(memif_uring *u)
{
    if (u->sqe_map != NULL && u->sqe_map != MAP_FAILED)
        munmap(u->sqe_map, u->sqe_len);
    if (u->ring_map != NULL && u->ring_map != MAP_FAILED)
        munmap(u->ring_map, u->ring_len);
    if (u->fd >= 0)
        close(u->fd);
    memset(u, 0, sizeof *u);
    u->fd = -1;
}

/* 0 or -errno. */
static int memif_uring_open(memif_uring *u, unsigned entries)
{
    struct memif_uring_params p;
    size_t sq_len, cq_len;
    char *ring;
    int err;
    memset(u, 0, sizeof *u);
    memset(&p, 0, sizeof p);
    u->fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (u->fd < 0) {
        err = errno;
        u->fd = -1;
        return -err;
    }
    if (!(p.features & MEMIF_IORING_FEAT_SINGLE_MMAP)) {
        memif_uring_close(u);
        return -EOPNOTSUPP;
    }
    (void)fcntl(u->fd, F_SETFD, FD_CLOEXEC);
    sq_len = p.sq_off.array + p.sq_entries * sizeof(uint32_t);
    cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct memif_cqe);
    u->ring_len = sq_len > cq_len ? sq_len : cq_len;
    u->ring_map = mmap(NULL, u->ring_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                       u->fd, MEMIF_IORING_OFF_SQ_RING);
    if (u->ring_map == MAP_FAILED) {
        err = errno;
        memif_uring_close(u);
        return -err;
    }
    u->sqe_len = p.sq_entries * sizeof(struct memif_sqe);
    u->sqe_map = mmap(NULL, u->sqe_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                      u->fd, MEMIF_IORING_OFF_SQES);
    if (u->sqe_map == MAP_FAILED) {
        err = errno;
        memif_uring_close(u);
        return -err;
    }
    ring = (char *)u->ring_map;
    u->sq_tail = (uint32_t *)(ring + p.sq_off.tail);
    u->sq_mask = (uint32_t *)(ring + p.sq_off.ring_mask);
    u->sq_array = (uint32_t *)(ring + p.sq_off.array);
    u->cq_head = (uint32_t *)(ring + p.cq_off.head);
    u->cq_tail = (uint32_t *)(ring + p.cq_off.tail);
    u->cq_mask = (uint32_t *)(ring + p.cq_off.ring_mask);
    u->cqes = (struct memif_cqe *)(ring + p.cq_off.cqes);
    u->sqes = (struct memif_sqe *)u->sqe_map;
    return 0;
}

/* Write 1 to fd without sleeping: 8 on success, -EAGAIN when the file is blocking or its
 * counter is full, -EINPROGRESS if the kernel deferred the write (we never wait for it),
 * another -errno on failure. */
static int memif_uring_signal(memif_uring *u, int fd)
{
    uint32_t tail = *u->sq_tail;
    uint32_t idx = tail & *u->sq_mask;
    uint32_t head, ctail;
    int res = -EINPROGRESS;
    long r;
    struct memif_sqe *sqe = &u->sqes[idx];
    memset(sqe, 0, sizeof *sqe);
    sqe->opcode = MEMIF_IORING_OP_WRITE;
    sqe->fd = fd;
    sqe->off = (uint64_t)-1;
    sqe->addr = (uint64_t)(uintptr_t)&memif_signal_one;
    sqe->len = 8;
    sqe->rw_flags = RWF_NOWAIT;
    sqe->user_data = (uint64_t)(uint32_t)fd;
    u->sq_array[idx] = idx;
    __atomic_store_n(u->sq_tail, tail + 1, __ATOMIC_RELEASE);
    do {
        r = syscall(__NR_io_uring_enter, u->fd, 1, 0, 0, NULL, 0);
    } while (r < 0 && errno == EINTR);
    if (r < 0)
        return -errno;
    /* Reap everything: this write's completion and any late one of a deferred write. */
    head = *u->cq_head;
    ctail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);
    while (head != ctail) {
        struct memif_cqe *cqe = &u->cqes[head & *u->cq_mask];
        if (cqe->user_data == (uint64_t)(uint32_t)fd)
            res = cqe->res;
        head++;
    }
    __atomic_store_n(u->cq_head, head, __ATOMIC_RELEASE);
    return res;
}

/* Does this kernel give RWF_NOWAIT semantics to io_uring writes on eventfds: inline on a
 * non-blocking one, refused at once (-EAGAIN) on a blocking one, even one with room? */
static int memif_uring_probe(void)
{
    memif_uring u;
    int ok = 0, nonblocking, blocking;
    uint64_t drained = 0;
    if (memif_uring_open(&u, 4) < 0)
        return 0;
    nonblocking = (int)syscall(SYS_eventfd2, 0, O_NONBLOCK | O_CLOEXEC);
    blocking = (int)syscall(SYS_eventfd2, 0, O_CLOEXEC);
    if (nonblocking >= 0 && blocking >= 0)
        ok = memif_uring_signal(&u, nonblocking) == 8 &&
             read(nonblocking, &drained, 8) == 8 && drained == 1 &&
             memif_uring_signal(&u, blocking) == -EAGAIN;
    if (nonblocking >= 0)
        close(nonblocking);
    if (blocking >= 0)
        close(blocking);
    memif_uring_close(&u);
    return ok;
}

/* ---------------------------------------------------------------- the helper-thread fallback */

enum { MEMIF_HELPER_RUNNING, MEMIF_HELPER_EXITED, MEMIF_HELPER_ORPHANED };

typedef struct {
    int wake_fd;      /* private eventfd: only we hold it, so poking it never blocks */
    int nslots;
    int stop;         /* atomic */
    int state;        /* atomic: MEMIF_HELPER_* */
    int busy_fd;      /* atomic: the peer fd the helper is writing now, or -1 */
    int *fds;         /* per slot: the peer's eventfd, -1 when free (atomic) */
    uint8_t *pending; /* per slot: atomic flag set by the loop thread */
} memif_signal_thread;

static void memif_signal_thread_release(memif_signal_thread *t)
{
    if (t->wake_fd >= 0)
        close(t->wake_fd);
    free(t->fds);
    free(t->pending);
    free(t);
}

static void memif_signal_thread_main(void *arg)
{
    memif_signal_thread *t = (memif_signal_thread *)arg;
    struct pollfd pfd;
    uint64_t value;
    int i, running = MEMIF_HELPER_RUNNING;
    pfd.fd = t->wake_fd;
    pfd.events = POLLIN;
    prctl(PR_SET_NAME, "memif-signal"); /* what top -H and /proc/PID/task/N/comm show */
    while (!__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE)) {
        if (poll(&pfd, 1, -1) < 0 && errno != EINTR)
            break;
        if (read(t->wake_fd, &value, 8) < 0 && errno != EAGAIN)
            break;
        for (i = 0; i < t->nslots && !__atomic_load_n(&t->stop, __ATOMIC_ACQUIRE); i++) {
            int fd;
            if (!__atomic_exchange_n(&t->pending[i], 0, __ATOMIC_ACQ_REL))
                continue;
            fd = __atomic_load_n(&t->fds[i], __ATOMIC_ACQUIRE);
            if (fd < 0)
                continue;
            __atomic_store_n(&t->busy_fd, fd, __ATOMIC_RELEASE);
            /* May sleep if the peer made the file blocking and filled the counter: only this
               thread waits, and memif_signal_thread_free() drains the counter to release it. */
            (void)!write(fd, &memif_signal_one, 8);
            __atomic_store_n(&t->busy_fd, -1, __ATOMIC_RELEASE);
        }
    }
    /* Whoever moves the state first decides who frees: the owner frees an exited helper's
       state (the helper touches none of it after this exchange), an orphaned helper frees it
       itself. The thread is detached: nobody joins it. */
    if (!__atomic_compare_exchange_n(&t->state, &running, MEMIF_HELPER_EXITED, 0,
                                     __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
        memif_signal_thread_release(t);
}

/* NULL with errno set on failure. */
static memif_signal_thread *memif_signal_thread_new(int nslots)
{
    int i, err;
    unsigned long started;
    memif_signal_thread *t = (memif_signal_thread *)calloc(1, sizeof *t);
    if (t == NULL)
        return NULL;
    t->nslots = nslots;
    t->busy_fd = -1;
    t->fds = (int *)malloc(sizeof(int) * (nslots > 0 ? nslots : 1));
    t->pending = (uint8_t *)calloc(nslots > 0 ? nslots : 1, 1);
    t->wake_fd = (int)syscall(SYS_eventfd2, 0, O_NONBLOCK | O_CLOEXEC);
    if (t->fds == NULL || t->pending == NULL || t->wake_fd < 0) {
        err = errno;
        memif_signal_thread_release(t);
        errno = err;
        return NULL;
    }
    for (i = 0; i < nslots; i++)
        t->fds[i] = -1;
    started = PyThread_start_new_thread(memif_signal_thread_main, t);
    if (started == PYTHREAD_INVALID_THREAD_ID) {
        memif_signal_thread_release(t);
        errno = EAGAIN; /* what pthread_create says when it cannot start one */
        return NULL;
    }
    return t;
}

static void memif_signal_thread_set(memif_signal_thread *t, int slot, int fd)
{
    __atomic_store_n(&t->fds[slot], fd, __ATOMIC_RELEASE);
}

/* Never blocks: a flag, and a write to our own eventfd whose counter the helper keeps low. */
static void memif_signal_thread_post(memif_signal_thread *t, int slot)
{
    if (!__atomic_exchange_n(&t->pending[slot], 1, __ATOMIC_ACQ_REL))
        (void)!write(t->wake_fd, &memif_signal_one, 8);
}

/* Stop the helper, freeing it from a stalled write by draining that peer eventfd with a read
 * that cannot sleep (the drained value is lost: only a hostile peer stalls us). Returns 0 once
 * it has exited, 1 if it is still stuck after timeout_ms: it then frees itself when the peer
 * lets its write through. Either way `t` must not be used again. */
static int memif_signal_thread_free(memif_signal_thread *t, int timeout_ms)
{
    struct timespec pause = {0, 200000};
    long waited_us = 0;
    int running;
    __atomic_store_n(&t->stop, 1, __ATOMIC_RELEASE);
    (void)!write(t->wake_fd, &memif_signal_one, 8);
    while (__atomic_load_n(&t->state, __ATOMIC_ACQUIRE) == MEMIF_HELPER_RUNNING) {
        int fd = __atomic_load_n(&t->busy_fd, __ATOMIC_ACQUIRE);
        if (fd >= 0) {
            uint64_t drained;
            struct iovec iov = {&drained, 8};
            (void)preadv2(fd, &iov, 1, -1, RWF_NOWAIT);
        }
        if (waited_us >= (long)timeout_ms * 1000) {
            running = MEMIF_HELPER_RUNNING;
            if (__atomic_compare_exchange_n(&t->state, &running, MEMIF_HELPER_ORPHANED, 0,
                                            __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
                return 1; /* t belongs to the helper now */
            break; /* it exited meanwhile */
        }
        nanosleep(&pause, NULL);
        waited_us += 200;
    }
    memif_signal_thread_release(t);
    return 0;
}

#endif
