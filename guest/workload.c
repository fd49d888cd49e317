/* xenclone test guest: 32-bit flat protected mode, no paging, loaded at 0x1000.
 * Also a Multiboot v1 kernel so QEMU -kernel boots the very same code.
 * Every instruction is costly on kvm-pvm (~1.3 us), so the workload only
 * touches pages and mixes a few words; the VMM writes the data set.
 * Python mirror (expected answers): xenclone/workload.py. */
#include <stdint.h>

#define PORT_READY    0x10
#define PORT_CLONE_ID 0x11
#define PORT_INPUT    0x12
#define PORT_RESULT   0x13
#define PORT_DONE     0x14
#define PARAMS_MAGIC  0x58434C4Eu
#define STACK_TOP     0x10000

struct params {
    uint32_t magic, data_first_pfn, data_npages, common_reads,
             clone_reads, write_pages, seed;
};
#define P ((volatile const struct params *)0x10000)

/* Entry at 0x1000: jump over the multiboot header (it must sit in the first
 * 8 KiB of the ELF file, 4-byte aligned); multiboot leaves ESP undefined. */
__asm__(
    ".section .text.entry,\"ax\"\n"
    ".globl _start\n"
    "_start: jmp 1f\n"
    ".align 4\n"
    "multiboot_header: .long 0x1BADB002, 0, -0x1BADB002\n"
    "1: mov $0x10000, %esp\n"   /* STACK_TOP */
    "   call guest_main\n"
    "2: hlt\n"
    "   jmp 2b\n"
    ".previous\n");

static inline void outl(uint16_t port, uint32_t v)
{
    __asm__ volatile("outl %0,%1" :: "a"(v), "Nd"(port));
}

static inline uint32_t inl(uint16_t port)
{
    uint32_t v;
    __asm__ volatile("inl %1,%0" : "=a"(v) : "Nd"(port));
    return v;
}

static inline volatile uint32_t *word(uint32_t pfn, uint32_t w)
{
    return (volatile uint32_t *)(pfn * 4096u + w * 4u);
}

static void __attribute__((noreturn)) halt_forever(void)
{
    for (;;)
        __asm__ volatile("hlt");
}

void __attribute__((noreturn)) guest_main(void)
{
    if (P->magic != PARAMS_MAGIC) {
        outl(PORT_DONE, 0xBAD);
        halt_forever();
    }
    outl(PORT_READY, 1);
    __asm__ volatile("hlt" ::: "memory");   /* bless point; clones resume here */

    uint32_t id = inl(PORT_CLONE_ID);
    uint32_t input = inl(PORT_INPUT);
    uint32_t first = P->data_first_pfn, n = P->data_npages;
    uint32_t common = P->common_reads, reads = P->clone_reads;
    uint32_t writes = P->write_pages, seed = P->seed;
    uint32_t s = 0;

    /* p = first + floor(i*n/common) in 32-bit steps: 64-bit division would
     * need libgcc, which -m32 without multilib does not have. */
    if (common) {
        uint32_t q = n / common, r = n % common, off = 0, frac = 0;
        for (uint32_t i = 0; i < common; i++) {
            s = s * 31 + *word(first + off, i & 1023);
            off += q;
            frac += r;
            if (frac >= common) {
                frac -= common;
                off++;
            }
        }
    }

    uint32_t x = seed ^ (id * 2654435761u) ^ input;
    for (uint32_t j = 0; j < reads; j++) {
        x = x * 1664525u + 1013904223u;
        s = s * 31 + *word(first + (x >> 8) % n, x & 1023);
    }

    /* The written value must not depend on s: s*31 + (s ^ c) is about 32*s,
     * so a few writes would shift every read out of the answer. */
    for (uint32_t k = 0; k < writes; k++) {
        volatile uint32_t *w = word(first + ((x >> 4) + k * 97u) % n, k & 1023);
        *w = id ^ x ^ k;
        s = s * 31 + *w;
    }

    outl(PORT_RESULT, s);
    outl(PORT_DONE, 0);
    halt_forever();
}
