/* Port I/O, the guests' only way to their VMM (32-bit on ours; QEMU's
 * fw_cfg and debug console take 8- and 16-bit accesses). */
#ifndef XENCLONE_PORTIO_H
#define XENCLONE_PORTIO_H
#include <stdint.h>

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

static inline void outw(uint16_t port, uint16_t v)
{
    __asm__ volatile("outw %0,%1" :: "a"(v), "Nd"(port));
}

static inline void outb(uint16_t port, uint8_t v)
{
    __asm__ volatile("outb %0,%1" :: "a"(v), "Nd"(port));
}

static inline uint8_t inb(uint16_t port)
{
    uint8_t v;
    __asm__ volatile("inb %1,%0" : "=a"(v) : "Nd"(port));
    return v;
}

#endif
