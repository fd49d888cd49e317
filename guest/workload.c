/* xenclone test guest: 32-bit flat protected mode, no paging, loaded at 0x1000.
 * Also a Multiboot v1 kernel so QEMU -kernel boots the very same code, and a
 * PVH kernel for Xen (the XEN_ELFNOTE_PHYS32_ENTRY note below).
 * Every instruction is costly on kvm-pvm (docs/design.md), so the workload only
 * touches pages and mixes a few words; the VMM writes the data set.
 * Python mirror (expected answers): xenclone/workload.py.
 *
 * On KVM the guest talks through I/O ports and parks with hlt.  Under Xen
 * PVH there is no device model (port reads give all-ones, writes vanish)
 * and hlt with interrupts off takes the vCPU down, so the PVH entry sets
 * on_xen and the guest uses a mailbox in the params page instead, which
 * the backend reads and writes through foreign mappings. */
#include <stdint.h>
#include "portio.h"
#include "qemu_channel.h"

#define PORT_READY    0x10
#define PORT_CLONE_ID 0x11
#define PORT_INPUT    0x12
#define PORT_RESULT   0x13
#define PORT_DONE     0x14
#define PARAMS_MAGIC  0x58434C4Eu
#define STACK_TOP     0x10000
#define MAILBOX       0x10800  /* in the params page */
#define MAILBOX_START_INFO 0x10818
#define XEN_ELFNOTE_PHYS32_ENTRY 18
#define STR(x)  STR_(x)
#define STR_(x) #x
#define DONE_OK       1
#define DONE_BAD      0xBAD

struct params {
    uint32_t magic, data_first_pfn, data_npages, common_reads,
             clone_reads, write_pages, seed, hostile;
};
#define P ((volatile const struct params *)0x10000)

/* Xen only: written by the backend (go, clone_id, input) and the guest. */
struct mailbox {
    uint32_t ready, go, clone_id, input, result, done, start_info;
};
#define MB ((volatile struct mailbox *)MAILBOX)

uint32_t on_xen;        /* .bss: 0 unless the PVH entry ran */
uint32_t on_qemu;       /* .bss: set before the bless point under QEMU */

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
    /* PVH: paging off, flat segments, %ebx = hvm_start_info, %esp unset. */
    ".globl _start_pvh\n"
    "_start_pvh: movl $1, on_xen\n"
    "   movl %ebx, " STR(MAILBOX_START_INFO) "\n"   /* for the backend to check */
    "   jmp 1b\n"
    ".previous\n"
    /* Not loaded (no \"a\" flag): Xen's ELF loader reads SHT_NOTE sections. */
    ".pushsection .note.Xen,\"\",@note\n"
    ".align 4\n"
    ".long 4, 4, " STR(XEN_ELFNOTE_PHYS32_ENTRY) "\n"    /* namesz, descsz, type */
    ".asciz \"Xen\"\n"
    ".long _start_pvh\n"
    ".popsection\n");

static inline volatile uint32_t *word(uint32_t pfn, uint32_t w)
{
    return (volatile uint32_t *)(pfn * 4096u + w * 4u);
}

static void __attribute__((noreturn)) halt_forever(void)
{
    for (;;)
        __asm__ volatile("hlt");
}

/* The bless point; returns when a clone (or the resumed master) may go. */
static void ready(void)
{
    if (on_xen) {
        /* The backend pauses the domain once it sees ready; a clone's
         * mailbox says go before its first instruction runs. */
        MB->ready = 1;
        while (!MB->go)
            __asm__ volatile("pause" ::: "memory");
    } else if (on_qemu) {
        outb(DEBUGCON, 'R');    /* the snapshot is taken while this spins */
        while (!qemu_clone_args(&MB->clone_id, &MB->input))
            __asm__ volatile("pause" ::: "memory");
        outb(DEBUGCON, 'G');
    } else {
        outl(PORT_READY, 1);
        __asm__ volatile("hlt" ::: "memory");   /* clones resume here */
    }
}

static void __attribute__((noreturn)) done(uint32_t status, uint32_t result)
{
    if (on_xen) {
        MB->result = result;
        MB->done = status;
    } else if (on_qemu) {
        qemu_result(status, result);
    } else {
        if (status == DONE_OK)
            outl(PORT_RESULT, result);
        outl(PORT_DONE, status == DONE_OK ? 0 : status);
    }
    halt_forever();     /* on Xen: the vCPU goes down, the domain powers off */
}

void __attribute__((noreturn)) guest_main(void)
{
    /* Our VMMs write the params before the first instruction; under QEMU
     * the BIOS ran over RAM, so the host writes them when asked.  The
     * probe's port accesses happen only there. */
    if (P->magic != PARAMS_MAGIC && !on_xen && qemu_present()) {
        on_qemu = 1;
        qemu_wait_params(&P->magic, PARAMS_MAGIC);
    }
    if (P->magic != PARAMS_MAGIC)
        done(DONE_BAD, 0);
    ready();

    /* Xen and QEMU: the mailbox (QEMU's ready() fills it from fw_cfg). */
    uint32_t id = on_xen || on_qemu ? MB->clone_id : inl(PORT_CLONE_ID);
    uint32_t input = on_xen || on_qemu ? MB->input : inl(PORT_INPUT);
    uint32_t first = P->data_first_pfn, n = P->data_npages;
    uint32_t common = P->common_reads, reads = P->clone_reads;
    uint32_t writes = P->write_pages, seed = P->seed;
    uint32_t s = 0;

    /* A hostile clone (tests only) first hammers its pager: reads out of
     * order, and words across page boundaries changed and put back, as
     * fast as it can.  Both pages fault and turn private, each eviction is
     * undone at once, but the data, and so the answer, stay the same. */
    uint32_t y = seed ^ id;
    for (uint32_t k = P->hostile; k && n > 1; k--) {
        y = y * 1664525u + 1013904223u;
        volatile uint32_t *across = (volatile uint32_t *)((first + 1 + y % (n - 1)) * 4096u - 2);
        uint32_t old = *across;
        *across = ~old;
        *across = old;
        (void)*word(first + (y >> 12) % n, y & 1023);
    }

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

    done(DONE_OK, s);
}
