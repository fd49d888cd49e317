/* Page scan/copy helpers and the guest data-set pattern. */
#ifndef LX_PAGES_H
#define LX_PAGES_H
#include <stdint.h>

#define LX_KIND_WP 0x80     /* lx_page_kinds: the page is write-protected (uffd-wp) */

uint32_t lx_mix(uint32_t seed, uint32_t pfn, uint32_t w);    /* data-set word; mirrored in workload.py */
void lx_fill_dataset(void *mem, uint64_t mem_npages, uint32_t data_first_pfn,
                     uint32_t data_npages, uint32_t seed, uint32_t zero_every);
void lx_fill_dataset_range(void *mem, uint64_t first_pfn, uint64_t npages,
                           uint32_t data_first_pfn, uint32_t data_npages,
                           uint32_t seed, uint32_t zero_every);
uint64_t lx_copy_nonzero(const void *src, void *dst_or_null, uint64_t npages, uint8_t *zero_out);
void lx_page_sums(const void *mem, uint64_t npages, uint64_t *out);
int lx_pagemap_open(void);
int lx_page_kinds(int pagemap_fd, uint64_t addr, uint64_t npages, uint8_t *kinds);
int64_t lx_drop_clean(int pagemap_fd, uint64_t base, const uint64_t *pfns, uint64_t n,
                      uint8_t *dropped);
int lx_drop_pages(uint64_t base, const uint64_t *pfns, uint64_t n);
int lx_gather_pages(uint64_t base, const uint64_t *pfns, uint64_t n, void *dst);
uint32_t lx_crc32(const void *p, uint64_t len);
int lx_store_flush(int fd, uint64_t offset, uint64_t len, int sync);
#endif
