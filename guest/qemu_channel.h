/* The guest's channel under QEMU (bench/ runs the very same guest there).
 * QEMU has no device on our ports, so a clone's id and input come from a
 * fw_cfg file, "opt/xenclone" = "<id> <input>", that only the clone's QEMU
 * command line carries: the master, and so its snapshot, spins until the
 * file appears.  Marks and the result go to the ISA debug console:
 * 'P' waiting for the params page and data set (the BIOS wrote over RAM
 * after the host had), 'R' ready, 'G' the clone's first instruction, 'D' + 4 bytes result
 * (little-endian), or 'X' for bad params. */
#ifndef XENCLONE_QEMU_CHANNEL_H
#define XENCLONE_QEMU_CHANNEL_H
#include <stdint.h>
#include "portio.h"

#define FW_CFG_SEL      0x510
#define FW_CFG_DATA     0x511
#define FW_CFG_FILE_DIR 0x19
#define DEBUGCON        0xE9

/* The fw_cfg signature; our VMM answers 0 on unknown ports (it is asked
 * only when no params were written, which our VMMs always do). */
static int qemu_present(void)
{
    outw(FW_CFG_SEL, 0);
    return inb(FW_CFG_DATA) == 'Q' && inb(FW_CFG_DATA) == 'E'
        && inb(FW_CFG_DATA) == 'M' && inb(FW_CFG_DATA) == 'U';
}

static void qemu_wait_params(volatile const uint32_t *magic, uint32_t want)
{
    outb(DEBUGCON, 'P');
    while (*magic != want)
        __asm__ volatile("pause" ::: "memory");
}

static uint32_t fw_cfg_be(int bytes)
{
    uint32_t v = 0;
    while (bytes--)
        v = v << 8 | inb(FW_CFG_DATA);
    return v;
}

/* 1 and the clone's id and input once opt/xenclone exists, else 0.  A
 * directory read a restore cut in two only misses the file: the master's
 * directory has no entry at the new file's index. */
static int qemu_clone_args(volatile uint32_t *id, volatile uint32_t *input)
{
    static const char want[] = "opt/xenclone";
    outw(FW_CFG_SEL, FW_CFG_FILE_DIR);
    for (uint32_t n = fw_cfg_be(4); n; n--) {
        uint32_t size = fw_cfg_be(4), sel = fw_cfg_be(2);
        int match = 1;
        fw_cfg_be(2);
        for (uint32_t c = 0; c < 56; c++)
            if (inb(FW_CFG_DATA) != (c < sizeof want ? want[c] : 0) && c < sizeof want)
                match = 0;
        if (!match)
            continue;
        uint32_t v[2] = {0, 0}, k = 0;
        outw(FW_CFG_SEL, (uint16_t)sel);
        while (size--) {
            uint8_t ch = inb(FW_CFG_DATA);
            if (ch >= '0' && ch <= '9')
                v[k] = v[k] * 10 + (ch - '0');
            else if (ch == ' ')
                k = 1;
        }
        *id = v[0];
        *input = v[1];
        return 1;
    }
    return 0;
}

static void qemu_result(uint32_t status, uint32_t result)
{
    if (status != 1) {
        outb(DEBUGCON, 'X');
        return;
    }
    outb(DEBUGCON, 'D');
    for (int i = 0; i < 4; i++)
        outb(DEBUGCON, (uint8_t)(result >> (8 * i)));
}
#endif
