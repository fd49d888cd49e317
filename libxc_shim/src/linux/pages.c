/* Page scan/copy helpers and the guest data-set pattern (GIL released). */
#define _GNU_SOURCE
#include "pages.h"
#include "uffd_pager.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#define PAGE 4096u

uint32_t lx_mix(uint32_t seed, uint32_t pfn, uint32_t w)
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
void lx_fill_dataset(void *mem, uint64_t mem_npages, uint32_t data_first_pfn,
                     uint32_t data_npages, uint32_t seed, uint32_t zero_every)
{
    lx_fill_dataset_range(mem, 0, mem_npages, data_first_pfn, data_npages, seed, zero_every);
}

/* Pages first_pfn .. first_pfn + npages - 1 of guest RAM, mapped at mem
 * (the Xen backend fills a master through foreign mappings, in batches). */
void lx_fill_dataset_range(void *mem, uint64_t first_pfn, uint64_t npages,
                           uint32_t data_first_pfn, uint32_t data_npages,
                           uint32_t seed, uint32_t zero_every)
{
    uint64_t start = first_pfn > data_first_pfn ? first_pfn : data_first_pfn;
    uint64_t end = (uint64_t)data_first_pfn + data_npages;
    if (end > first_pfn + npages)
        end = first_pfn + npages;
    for (uint64_t p = start; p < end; p++) {
        if (zero_every && p % zero_every == 0)
            continue;
        uint32_t *page = (uint32_t *)((char *)mem + (p - first_pfn) * PAGE);
        for (uint32_t w = 0; w < PAGE / 4; w++)
            page[w] = lx_mix(seed, (uint32_t)p, w);
    }
}

static int page_is_zero(const uint64_t *q)
{
    for (unsigned i = 0; i < PAGE / 8; i += 4)
        if (q[i] | q[i + 1] | q[i + 2] | q[i + 3])
            return 0;
    return 1;
}

uint64_t lx_copy_nonzero(const void *src, void *dst_or_null, uint64_t npages, uint8_t *zero_out)
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

void lx_page_sums(const void *mem, uint64_t npages, uint64_t *out)
{
    for (uint64_t p = 0; p < npages; p++) {
        const uint64_t *q = (const uint64_t *)((const char *)mem + p * PAGE);
        uint64_t s = 0;
        for (unsigned i = 0; i < PAGE / 8; i++)
            s += q[i];
        out[p] = s;
    }
}

int lx_pagemap_open(void)
{
    int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

/* PAGEMAP_SCAN (kernel >= 6.7; not in Debian 12's headers): the kernel
 * reports runs of pages with equal categories. */
struct pm_scan_arg_ {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
struct page_region_ { uint64_t start, end, categories; };
#define PAGEMAP_SCAN_ _IOWR('f', 16, struct pm_scan_arg_)
#define PAGE_IS_WRITTEN (1 << 1)    /* for a present page: not uffd write-protected */
#define PAGE_IS_FILE    (1 << 2)    /* a page cache page: the image's */
#define PAGE_IS_PRESENT (1 << 3)
#define PAGE_IS_PFNZERO (1 << 5)    /* the shared zero page */

static uint8_t page_kind(uint64_t c)
{
    uint8_t kind = c & PAGE_IS_PFNZERO ? LX_PAGE_ZERO
                 : c & PAGE_IS_FILE ? LX_PAGE_SHARED : LX_PAGE_PRIVATE;
    return kind | (c & PAGE_IS_WRITTEN ? 0 : LX_KIND_WP);
}

/* The kernel's view of [addr, addr + npages pages): per page LX_PAGE_ABSENT,
 * _SHARED (image page), _PRIVATE (anonymous copy) or _ZERO, plus
 * LX_KIND_WP when write-protected. */
int lx_page_kinds(int pagemap_fd, uint64_t addr, uint64_t npages, uint8_t *kinds)
{
    struct page_region_ vec[256];
    uint64_t base = addr, end = addr + npages * PAGE;
    memset(kinds, LX_PAGE_ABSENT, npages);
    while (addr < end) {
        struct pm_scan_arg_ a = {
            .size = sizeof a, .start = addr, .end = end,
            .vec = (uint64_t)(uintptr_t)vec, .vec_len = sizeof vec / sizeof vec[0],
            .category_mask = PAGE_IS_PRESENT,
            .return_mask = PAGE_IS_WRITTEN | PAGE_IS_FILE | PAGE_IS_PRESENT | PAGE_IS_PFNZERO,
        };
        int n = ioctl(pagemap_fd, PAGEMAP_SCAN_, &a);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return -errno;
        for (int i = 0; i < n; i++)
            memset(kinds + (vec[i].start - base) / PAGE, page_kind(vec[i].categories),
                   (vec[i].end - vec[i].start) / PAGE);
        if (a.walk_end <= addr)
            return -EIO;
        addr = a.walk_end;
    }
    return 0;
}

/* Drop (MADV_DONTNEED) the listed pages that map the image page or the
 * zero page and are still write-protected: the next touch faults again.
 * A page whose protection was lifted may be copied (written) at any
 * moment, so it is kept, as are private copies.
 * Returns how many were dropped; dropped[i] says which. */
int64_t lx_drop_clean(int pagemap_fd, uint64_t base, const uint64_t *pfns, uint64_t n,
                      uint8_t *dropped)
{
    int64_t count = 0;
    for (uint64_t i = 0; i < n; i++) {
        uint64_t va = base + pfns[i] * PAGE;
        uint8_t kind;
        int rc = lx_page_kinds(pagemap_fd, va, 1, &kind);
        dropped[i] = 0;
        if (rc < 0)
            return rc;
        if (kind != (LX_PAGE_SHARED | LX_KIND_WP) && kind != (LX_PAGE_ZERO | LX_KIND_WP))
            continue;
        if (madvise((void *)(uintptr_t)va, PAGE, MADV_DONTNEED) < 0)
            return -errno;
        dropped[i] = 1;
        count++;
    }
    return count;
}

int lx_drop_pages(uint64_t base, const uint64_t *pfns, uint64_t n)
{
    for (uint64_t i = 0; i < n; i++)
        if (madvise((void *)(uintptr_t)(base + pfns[i] * PAGE), PAGE, MADV_DONTNEED) < 0)
            return -errno;
    return 0;
}

int lx_gather_pages(uint64_t base, const uint64_t *pfns, uint64_t n, void *dst)
{
    for (uint64_t i = 0; i < n; i++)
        memcpy((char *)dst + i * PAGE, (const void *)(uintptr_t)(base + pfns[i] * PAGE), PAGE);
    return 0;
}

/* CRC-32 as zlib computes it (reflected 0xEDB88320), eight bytes a step. */
static uint32_t crc_table[8][256];

__attribute__((constructor)) static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[0][i] = c;
    }
    for (uint32_t i = 0; i < 256; i++)
        for (int t = 1; t < 8; t++)
            crc_table[t][i] = crc_table[t - 1][i] >> 8 ^ crc_table[0][crc_table[t - 1][i] & 0xFF];
}

uint32_t lx_crc32(const void *p, uint64_t len)
{
    const uint8_t *b = p;
    uint32_t c = 0xFFFFFFFFu;
    for (; len >= 8; len -= 8, b += 8) {
        uint32_t lo, hi;
        memcpy(&lo, b, 4);
        memcpy(&hi, b + 4, 4);
        lo ^= c;
        c = crc_table[7][lo & 0xFF] ^ crc_table[6][lo >> 8 & 0xFF] ^
            crc_table[5][lo >> 16 & 0xFF] ^ crc_table[4][lo >> 24] ^
            crc_table[3][hi & 0xFF] ^ crc_table[2][hi >> 8 & 0xFF] ^
            crc_table[1][hi >> 16 & 0xFF] ^ crc_table[0][hi >> 24];
    }
    while (len--)
        c = crc_table[0][(c ^ *b++) & 0xFF] ^ c >> 8;
    return ~c;
}

/* Push written store pages to disk and out of the page cache: DONTNEED
 * drops only clean pages, so wait for the writeback first (fdatasync when
 * the caller wants it durable, else sync_file_range over the range). */
int lx_store_flush(int fd, uint64_t offset, uint64_t len, int sync)
{
    int rc = sync ? fdatasync(fd)
                  : sync_file_range(fd, (off_t)offset, (off_t)len,
                                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE |
                                    SYNC_FILE_RANGE_WAIT_AFTER);
    if (rc < 0)
        return -errno;
    return -posix_fadvise(fd, (off_t)offset, (off_t)len, POSIX_FADV_DONTNEED);
}
