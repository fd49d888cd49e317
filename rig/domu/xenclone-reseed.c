/* xenclone-reseed for the rig's busybox domU, which has no python3: what
 * guest/identity-agent/xenclone-reseed does.  Hex entropy on stdin is
 * credited to the input pool (RNDADDENTROPY), then RNDRESEEDCRNG makes the
 * CRNG rekey from it now, not at its next scheduled reseed.  Built static
 * by rig/build.sh; the agent runs it through XENCLONE_RESEED. */
#include <ctype.h>
#include <fcntl.h>
#include <linux/random.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#ifndef RNDRESEEDCRNG
#define RNDRESEEDCRNG _IO('R', 0x07)
#endif

static int nibble(int c)
{
    return isdigit(c) ? c - '0' : tolower(c) - 'a' + 10;
}

int main(void)
{
    struct { int entropy_count, buf_size; unsigned char buf[512]; } req;
    char hex[2 * sizeof(req.buf) + 2];
    size_t n = fread(hex, 1, sizeof(hex) - 1, stdin), len = 0;

    while (n > 0 && isspace((unsigned char)hex[n - 1]))
        n--;
    if (n % 2 || n / 2 > sizeof(req.buf)) {
        fputs("xenclone-reseed: stdin is not hex\n", stderr);
        return 1;
    }
    for (size_t i = 0; i < n; i += 2) {
        if (!isxdigit((unsigned char)hex[i]) || !isxdigit((unsigned char)hex[i + 1])) {
            fputs("xenclone-reseed: stdin is not hex\n", stderr);
            return 1;
        }
        req.buf[len++] = nibble(hex[i]) << 4 | nibble(hex[i + 1]);
    }
    if (len < 32) {
        fprintf(stderr, "xenclone-reseed: %zu bytes: at least 32 wanted\n", len);
        return 1;
    }
    req.entropy_count = len * 8;
    req.buf_size = len;
    int fd = open("/dev/urandom", O_WRONLY);
    if (fd < 0 || ioctl(fd, RNDADDENTROPY, &req) || ioctl(fd, RNDRESEEDCRNG)) {
        perror("xenclone-reseed: /dev/urandom");
        return 1;
    }
    return 0;
}
