/* Page scan/copy helpers and the guest data-set pattern (GIL released). */
#define _GNU_SOURCE
#include "pages.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/mman.h>

#define PAGE 4096u
#define PM_PRESENT (1ull << 63)
#define PM_FILE    (1ull << 61)     /* file page or shared anon: the image's page, not a private copy */

uint32_t xc_mix(uint32_t seed, uint32_t pfn, uint32_t w)
{
    uint32_t h = seed ^ (pfn * 0x9E3779B1u) ^ (w * 0x85EBCA77u);
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    h *= 0x846CA68Bu;
    h ^= h >> 16;
    return h;
}

/* Zero pages are not written at all, so they stay holes in a memfd. */
void xc_fill_dataset(void *mem, uint64_t mem_npages, uint32_t data_first_pfn,
                     uint32_t data_npages, uint32_t seed, uint32_t zero_every)
{
    uint64_t end = (uint64_t)data_first_pfn + data_npages;
    if (end > mem_npages)
        end = mem_npages;
    for (uint64_t p = data_first_pfn; p < end; p++) {
        if (zero_every && p % zero_every == 0)
            continue;
        uint32_t *page = (uint32_t *)((char *)mem + p * PAGE);
        for (uint32_t w = 0; w < PAGE / 4; w++)
            page[w] = xc_mix(seed, (uint32_t)p, w);
    }
}

static int page_is_zero(const uint64_t *q)
{
    for (unsigned i = 0; i < PAGE / 8; i += 4)
        if (q[i] | q[i + 1] | q[i + 2] | q[i + 3])
            return 0;
    return 1;
}

uint64_t xc_copy_nonzero(const void *src, void *dst_or_null, uint64_t npages, uint8_t *zero_out)
{
    uint64_t nonzero = 0;
    for (uint64_t p = 0; p < npages; p++) {
        const char *s = (const char *)src + p * PAGE;
        zero_out[p] = page_is_zero((const uint64_t *)s);
        if (!zero_out[p]) {
            nonzero++;
            if (dst_or_null)
                memcpy((char *)dst_or_null + p * PAGE, s, PAGE);
        }
    }
    return nonzero;
}

void xc_page_sums(const void *mem, uint64_t npages, uint64_t *out)
{
    for (uint64_t p = 0; p < npages; p++) {
        const uint64_t *q = (const uint64_t *)((const char *)mem + p * PAGE);
        uint64_t s = 0;
        for (unsigned i = 0; i < PAGE / 8; i++)
            s += q[i];
        out[p] = s;
    }
}

int xc_pagemap_open(void)
{
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* Drop (MADV_DONTNEED) the listed pages that map the shared image page
 * (present + file): the next touch is a MINOR fault again. Pages the clone
 * wrote (private anon copies) and zero-page mappings are kept.
 * Returns how many were dropped; dropped[i] says which. */
int64_t xc_drop_clean(int pagemap_fd, uint64_t base, const uint64_t *pfns, uint64_t n,
                      uint8_t *dropped)
{
    int64_t count = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t va = base + pfns[i] * PAGE, entry;
        dropped[i] = 0;
        if (pread(pagemap_fd, &entry, sizeof entry, (off_t)(va / PAGE * 8)) != sizeof entry)
            return -(errno ? errno : EIO);
        if ((entry & (PM_PRESENT | PM_FILE)) != (PM_PRESENT | PM_FILE))
            continue;
        if (madvise((void *)(uintptr_t)va, PAGE, MADV_DONTNEED) < 0)
            return -errno;
        dropped[i] = 1;
        count++;
    }
    return count;
}
