/* Limits for bench/: memcpy, first touch, and a raw userfaultfd loop. */
#ifndef LX_BENCH_LIMITS_H
#define LX_BENCH_LIMITS_H
#include <stdint.h>

/* Nanoseconds (or -errno). */
int64_t lx_limit_memcpy(uint64_t bytes);
int64_t lx_limit_first_touch(uint64_t bytes);
/* ``threads`` threads read pages order[0..n) (thread t takes every
 * threads-th from t) of a private mapping of ``memfd``, served by a raw
 * MINOR-fault loop in the calling thread; *faults gets how many it served. */
int64_t lx_limit_raw_uffd(int memfd, uint64_t npages, const uint32_t *order, uint64_t n,
                          uint32_t threads, uint64_t *faults);
/* Read one byte of pages order[first], order[first + step], ... at base. */
uint64_t lx_touch_pages(uint64_t base, const uint32_t *order, uint64_t n, uint64_t first,
                        uint64_t step);
#endif
