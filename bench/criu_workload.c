/* The CRIU peer's workload: the test guest's (guest/workload.c) as a
 * process.  Its memory mirrors a master's guest RAM: page p of the image
 * at base + p * 4096, the same data set (lx_mix in libxc_shim/src/linux/pages.c),
 * zero pages never touched (so CRIU dumps only the data pages).
 *
 *   criu_workload MEMORY_PAGES DATA_FIRST_PFN DATA_NPAGES COMMON_READS
 *                 CLONE_READS WRITE_PAGES SEED ZERO_EVERY
 *
 * Started as the first process of a PID namespace of its own, so that
 * clones of it restore side by side, each in a new one; a session leader,
 * so that its session is in the dump; with no parent-death signal, which
 * CRIU would restore and the kernel deliver as soon as a detached restore
 * exits (``unshare --kill-child`` sets one: restores died at once).
 * Fills the image, writes 'R' on fd 1 and blocks reading fd 0: it is
 * dumped there.  A clone (restored) reads its clone id and input (two
 * little-endian uint32) from fd 0, writes 'G', runs the guest's workload
 * and writes 'D' and the 4-byte answer, as the guest does under QEMU
 * (xenclone/workload.py computes the expected one); then waits for
 * EOF on fd 0. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include "pages.h"     /* lx_mix: the data set, the same as the guest's */

#define PAGE 4096u

static int read_full(int fd, void *buf, size_t len)
{
    for (size_t got = 0; got < len;) {
        ssize_t r = read(fd, (char *)buf + got, len - got);
        if (r <= 0)
            return -1;
        got += r;
    }
    return 0;
}

static void say(const void *buf, size_t len)
{
    if (write(1, buf, len) != (ssize_t)len)
        _exit(3);
}

int main(int argc, char **argv)
{
    if (argc != 9) {
        fprintf(stderr, "usage: %s MEMORY_PAGES DATA_FIRST_PFN DATA_NPAGES COMMON_READS "
                "CLONE_READS WRITE_PAGES SEED ZERO_EVERY\n", argv[0]);
        return 2;
    }
    if (setsid() < 0 || prctl(PR_SET_PDEATHSIG, 0) < 0) {
        perror("setsid, PR_SET_PDEATHSIG");
        return 1;
    }
    uint32_t a[8];
    for (int i = 0; i < 8; i++) {
        char *end;
        unsigned long v = strtoul(argv[i + 1], &end, 0);
        if (!*argv[i + 1] || *end || v > UINT32_MAX) {
            fprintf(stderr, "not a 32-bit number: %s\n", argv[i + 1]);
            return 2;
        }
        a[i] = (uint32_t)v;
    }
    uint32_t pages = a[0], first = a[1], n = a[2], common = a[3], reads = a[4],
             writes = a[5], seed = a[6], zero_every = a[7];
    if (!n || first + (uint64_t)n > pages) {
        fprintf(stderr, "data pages %u..%u outside the image's %u\n", first, first + n, pages);
        return 2;
    }
    volatile uint32_t *mem = mmap(NULL, (size_t)pages * PAGE, PROT_READ | PROT_WRITE,
                                  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
#define WORD(p, w) (mem[(size_t)(p) * (PAGE / 4) + (w)])
    for (uint32_t p = first; p < first + n; p++)
        if (!zero_every || p % zero_every)
            for (uint32_t w = 0; w < PAGE / 4; w++)
                WORD(p, w) = lx_mix(seed, p, w);
    say("R", 1);

    uint32_t clone[2];
    if (read_full(0, clone, sizeof clone))
        return 1;
    say("G", 1);
    uint32_t id = clone[0], input = clone[1], s = 0;
    for (uint32_t i = 0; i < common; i++)
        s = s * 31 + WORD(first + (uint64_t)i * n / common, i & 1023);
    uint32_t x = seed ^ (id * 2654435761u) ^ input;
    for (uint32_t j = 0; j < reads; j++) {
        x = x * 1664525u + 1013904223u;
        s = s * 31 + WORD(first + (x >> 8) % n, x & 1023);
    }
    for (uint32_t k = 0; k < writes; k++) {
        volatile uint32_t *w = &WORD(first + ((x >> 4) + k * 97u) % n, k & 1023);
        *w = id ^ x ^ k;
        s = s * 31 + *w;
    }
    char done[5] = { 'D', s, s >> 8, s >> 16, s >> 24 };
    say(done, sizeof done);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    return 0;
}
