/* The limits bench/ measures the pager against, with no Python at all:
 * memcpy of an image, first touch of fresh memory, and a raw userfaultfd
 * loop serving a fault storm (threads reading pages of a private memfd
 * mapping; every fault a MINOR one answered with UFFDIO_CONTINUE, as the
 * pager's fast path answers it). */
#define _GNU_SOURCE
#include "bench_limits.h"
#include "uffd_pager.h"
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

#define PAGE 4096ull

static int64_t now_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int64_t lx_limit_memcpy(uint64_t bytes)
{
    char *src = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *dst = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (src == MAP_FAILED || dst == MAP_FAILED)
        return -ENOMEM;
    memset(src, 1, bytes);
    memset(dst, 2, bytes);      /* both resident: only the copy is timed */
    int64_t t = now_ns();
    memcpy(dst, src, bytes);
    t = now_ns() - t;
    munmap(src, bytes);
    munmap(dst, bytes);
    return t;
}

int64_t lx_limit_first_touch(uint64_t bytes)
{
    volatile char *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -ENOMEM;
    int64_t t = now_ns();
    for (uint64_t off = 0; off < bytes; off += PAGE)
        p[off] = 1;
    t = now_ns() - t;
    munmap((void *)p, bytes);
    return t;
}

struct toucher {
    const volatile char *base;
    const uint32_t *order;
    uint64_t n, first, step;
    uint64_t sum;
};

static void *touch(void *arg)
{
    struct toucher *t = arg;
    uint64_t s = 0;
    for (uint64_t i = t->first; i < t->n; i += t->step)
        s += t->base[(uint64_t)t->order[i] * PAGE];
    t->sum = s;
    return NULL;
}

uint64_t lx_touch_pages(uint64_t base, const uint32_t *order, uint64_t n, uint64_t first,
                        uint64_t step)
{
    struct toucher t = { (const volatile char *)(uintptr_t)base, order, n, first, step, 0 };
    touch(&t);
    return t.sum;
}

/* The raw loop: one thread reads batches of fault messages without
 * blocking while faults come (busy-poll), poll()s when they stop, and
 * answers each with UFFDIO_CONTINUE (write-protected, as the pager maps). */
int64_t lx_limit_raw_uffd(int memfd, uint64_t npages, const uint32_t *order, uint64_t n,
                          uint32_t threads, uint64_t *faults)
{
    uint64_t len = npages * PAGE;
    char *base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE, memfd, 0);
    if (base == MAP_FAILED)
        return -errno;
    int rc = 0;
    int uffd = lx_uffd_open(UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_WP_HUGETLBFS_SHMEM, NULL);
    if (uffd < 0) {
        munmap(base, len);
        return uffd;
    }
    rc = lx_uffd_register(uffd, (uint64_t)(uintptr_t)base, len,
                          UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP);
    pthread_t tid[64];
    struct toucher tt[64];
    if (threads > 64)
        threads = 64;
    int64_t t0 = now_ns();
    uint32_t started = 0;
    for (; !rc && started < threads; started++) {
        tt[started] = (struct toucher){ base, order, n, started, threads, 0 };
        if (pthread_create(&tid[started], NULL, touch, &tt[started]))
            break;
    }
    uint64_t served = 0, empty = 0;
    struct uffd_msg msgs[64];
    while (!rc && served < n) {
        ssize_t got = read(uffd, msgs, sizeof msgs);
        if (got <= 0) {
            if (got < 0 && errno != EAGAIN && errno != EINTR) {
                rc = -errno;
                break;
            }
            if (++empty > 1000) {       /* quiet: sleep in poll() until the next fault */
                struct pollfd p = { uffd, POLLIN, 0 };
                poll(&p, 1, 100);
                empty = 0;
            }
            continue;
        }
        empty = 0;
        for (size_t i = 0; i < (size_t)got / sizeof msgs[0]; i++) {
            if (msgs[i].event != UFFD_EVENT_PAGEFAULT)
                continue;
            uint64_t a = msgs[i].arg.pagefault.address & ~(PAGE - 1);
            struct uffdio_continue c = { .range = { a, PAGE }, .mode = UFFDIO_CONTINUE_MODE_WP };
            if (ioctl(uffd, UFFDIO_CONTINUE, &c) < 0 && errno == EEXIST) {
                struct uffdio_range r = { a, PAGE };
                ioctl(uffd, UFFDIO_WAKE, &r);
            }
            served++;
        }
    }
    for (uint32_t i = 0; i < started; i++)
        pthread_join(tid[i], NULL);
    int64_t t = now_ns() - t0;
    *faults = served;
    close(uffd);
    munmap(base, len);
    return rc ? rc : t;
}
