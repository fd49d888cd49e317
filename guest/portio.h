/* 32-bit port I/O, the guests' only way to their VMM. */
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

#endif
