/* xenclone XenStore test guest: a master that asks to be cloned through its
 * own XenStore node, as SnowFlock's sf_clone, over the micro-VM XenStore port
 * channel (xenclone/backends/kvm/xenstore_port.py).  Flat at 0x1000 like the
 * workload guest, built apart from it: build/xsguest.bin.
 *
 *   master: OUT READY, hlt (the bless point of `xenclone create`); once
 *           unpaused, write xenclone/request = {"op": "clone", "count": 1},
 *           then poll xenclone/response: OUT RESULT 1 (ok) or 2 (refused);
 *           3 if XenStore refused the write (a domain that may not ask).
 *   clone:  starts inside that poll loop, captured by the bless; it finds
 *           xenclone/clone-id (only clones have one): OUT RESULT 0x100 + id.
 * Then hlt.  Each request is sent again after a reset if no reply comes:
 * a clone's channel is new, wherever the master was when captured. */
#include <stdint.h>
#include "portio.h"

#define PORT_READY    0x10
#define PORT_RESULT   0x13
#define XS_DATA       0x20
#define XS_STATUS     0x21
#define NO_CHANNEL    0x80000000u
#define XS_READ       2u
#define XS_WATCH_EVENT 15u
#define XS_WRITE      11u
#define XS_ERROR      16u
#define POLLS         200       /* per reply byte; each poll is an I/O exit */
#define REPLY_MAX     256

__asm__(
    ".section .text.entry,\"ax\"\n"
    ".globl _start\n"
    "_start: mov $0x10000, %esp\n"
    "   call guest_main\n"
    "1: hlt\n"
    "   jmp 1b\n"
    ".previous\n");

static uint32_t next_req;
static char reply[REPLY_MAX + 1];
static uint32_t reply_len;

static uint32_t length(const char *s)
{
    uint32_t n = 0;
    while (s[n])
        n++;
    return n;
}

static void send_bytes(const void *p, uint32_t n)
{
    const uint8_t *b = p;
    for (uint32_t i = 0; i < n; i++)
        outl(XS_DATA, b[i]);
}

/* Next reply byte, or -1 when none comes (or the channel dropped). */
static int read_byte(void)
{
    for (int i = 0; i < POLLS; i++) {
        uint32_t v = inl(XS_DATA);
        if (v & 0x100)
            return v & 0xFF;
        if (inl(XS_STATUS) & NO_CHANNEL)
            return -1;
    }
    return -1;
}

static int read_word(uint32_t *w)
{
    *w = 0;
    for (int i = 0; i < 4; i++) {
        int b = read_byte();
        if (b < 0)
            return -1;
        *w |= (uint32_t)b << (8 * i);
    }
    return 0;
}

/* Wait for the reply to request `req`; skip watch events and stale replies. */
static int await_reply(uint32_t req, uint32_t *type)
{
    for (;;) {
        uint32_t h[4];
        for (int i = 0; i < 4; i++)
            if (read_word(&h[i]) < 0)
                return -1;
        reply_len = 0;
        for (uint32_t i = 0; i < h[3]; i++) {
            int b = read_byte();
            if (b < 0)
                return -1;
            if (reply_len < REPLY_MAX)
                reply[reply_len++] = (char)b;
        }
        reply[reply_len] = 0;
        if (h[1] == req && h[0] != XS_WATCH_EVENT) {
            *type = h[0];
            return 0;
        }
    }
}

/* One XenStore request; 0 and the reply in `reply`, or -1 on an error reply. */
static int xs_call(uint32_t type, const char *path, const char *value)
{
    uint32_t plen = length(path) + 1 + (value ? length(value) : 0);
    for (;;) {
        uint32_t got, h[4] = {type, ++next_req, 0, plen};
        outl(XS_STATUS, 0);                 /* reset: start afresh */
        send_bytes(h, sizeof h);
        send_bytes(path, length(path) + 1);
        if (value)
            send_bytes(value, length(value));
        if (await_reply(h[1], &got) == 0)
            return got == XS_ERROR ? -1 : 0;
    }
}

static int contains(const char *s, const char *word)
{
    for (; *s; s++) {
        uint32_t i = 0;
        while (word[i] && s[i] == word[i])
            i++;
        if (!word[i])
            return 1;
    }
    return 0;
}

static void __attribute__((noreturn)) report(uint32_t result)
{
    outl(PORT_RESULT, result);
    for (;;)
        __asm__ volatile("hlt");
}

void __attribute__((noreturn)) guest_main(void)
{
    outl(PORT_READY, 1);
    __asm__ volatile("hlt");                /* the bless point: wait to be unpaused */
    int refused = xs_call(XS_WRITE, "xenclone/request",
                          "{\"op\": \"clone\", \"count\": 1, \"id\": \"kvm\"}") < 0;
    for (;;) {
        /* First: a clone captured before the master saw the write's reply
         * writes again, and is refused, but it is a clone. */
        if (xs_call(XS_READ, "xenclone/clone-id", 0) == 0 && reply_len)
            report(0x100 + (uint32_t)(reply[0] - '0'));
        if (refused)
            report(3);
        if (xs_call(XS_READ, "xenclone/response", 0) == 0) {
            if (contains(reply, "\"ok\": true"))
                report(1);
            if (contains(reply, "\"ok\": false"))
                report(2);
        }
    }
}
