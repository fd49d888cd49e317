/* Region primitives shared by uffd_pager.c and fault_serve.c (not in the
 * cffi module): the caller holds the region lock around the rest. */
#ifndef LX_UFFD_REGION_H
#define LX_UFFD_REGION_H
#include "uffd_pager.h"

#define PAGE 4096ull
#define MAX_EAGAIN 1000         /* EAGAIN = mm changing under us; retry a bounded number of times */

void region_lock(struct lx_region *r);
void region_unlock(struct lx_region *r);
/* Wake the threads waiting on faults in [pfn, pfn + npages). */
int region_wake(struct lx_region *r, uint64_t pfn, uint64_t npages);
int region_protect(struct lx_region *r, uint64_t pfn, uint64_t npages, uint64_t mode);
int region_fill_pages(struct lx_region *r, uint64_t pfn, uint64_t npages, int how, int quiet);
int region_fill(struct lx_region *r, uint64_t pfn, uint64_t npages, int how);
int region_unprotect(struct lx_region *r, uint64_t pfn, uint64_t npages);
#endif
