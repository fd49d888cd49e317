"""The test guest's ABI, memory layout and workload, mirrored in Python.

guest/workload.c is the guest; libxc_shim/src/linux/pages.c writes its data set.
`expected_result` computes what a clone must answer, so tests and benchmarks
can check every clone. All arithmetic is uint32 wrapping, as in the guest.
"""
import dataclasses
import struct

PAGE_SIZE = 4096
M32 = 0xFFFFFFFF

# I/O ports (32-bit outl/inl)
PORT_READY = 0x10       # OUT 1: master set up; its next instruction is the bless-point hlt
PORT_CLONE_ID = 0x11    # IN: the clone's first exit after resume
PORT_INPUT = 0x12       # IN
PORT_RESULT = 0x13      # OUT
PORT_DONE = 0x14        # OUT 0 (0xBAD: bad params magic); then hlt forever

# Guest physical layout
CODE_ADDR = 0x1000
CODE_MAX = 12 * 1024
CODE_PFNS = range(CODE_ADDR // PAGE_SIZE, (CODE_ADDR + CODE_MAX) // PAGE_SIZE)
STACK_TOP = 0x10000
STACK_PFN = STACK_TOP // PAGE_SIZE - 1   # the stack stays within one page
PARAMS_PFN = 16
PARAMS_ADDR = PARAMS_PFN * PAGE_SIZE
PARAMS_MAGIC = 0x58434C4E
DATA_FIRST_PFN = 32
# Xen: the guest's mailbox (no device model, so no ports) in the params page.
MAILBOX_OFFSET = 0x800
MAILBOX = struct.Struct("<7I")           # ready, go, clone_id, input, result, done,
                                         # start_info (%ebx at the PVH entry)
MAILBOX_FIELDS = ("ready", "go", "clone_id", "input", "result", "done", "start_info")
DONE_OK, DONE_BAD_PARAMS = 1, 0xBAD
PARAMS_STRUCT = struct.Struct("<8I")     # magic, data_first_pfn, data_npages,
                                         # common_reads, clone_reads, write_pages, seed,
                                         # hostile
DEFAULT_SEED = 0x5EED1234


def mix(seed, p, w):
    """The data-set word; identical to lx_mix() in pages.c."""
    h = (seed ^ (p * 0x9E3779B1) ^ (w * 0x85EBCA77)) & M32
    h ^= h >> 16
    h = (h * 0x7FEB352D) & M32
    h ^= h >> 15
    h = (h * 0x846CA68B) & M32
    h ^= h >> 16
    return h


word = mix   # word(seed, p, w): word w of data page p (unless p is a zero page)


@dataclasses.dataclass(frozen=True)
class Params:
    memory_pages: int
    data_first_pfn: int
    data_npages: int
    common_reads: int
    clone_reads: int
    write_pages: int
    seed: int
    zero_every: int     # VMM-side only: every zero_every-th data page stays zero
    hostile: int = 0    # tests: rounds of hostile access first (the answer is the same)

    @classmethod
    def for_memory(cls, memory_mib, read_percent=10, write_pages=8, zero_every=16,
                   seed=DEFAULT_SEED, hostile=0):
        """All pages from DATA_FIRST_PFN to the end are data; a fifth of the
        reads are common to every clone, the rest depend on the clone."""
        pages = memory_mib * 1024 * 1024 // PAGE_SIZE
        data = pages - DATA_FIRST_PFN
        if data < 1:
            raise ValueError("memory too small: %d MiB" % memory_mib)
        reads = data * read_percent // 100
        common = max(1, reads // 5)
        return cls(pages, DATA_FIRST_PFN, data, common, max(1, reads - common),
                   write_pages, seed & M32, zero_every, hostile)

    @property
    def memory_bytes(self):
        return self.memory_pages * PAGE_SIZE

    def pack(self):
        """The params page the guest reads at PARAMS_ADDR."""
        return PARAMS_STRUCT.pack(PARAMS_MAGIC, self.data_first_pfn, self.data_npages,
                                  self.common_reads, self.clone_reads,
                                  self.write_pages, self.seed, self.hostile)

    def is_zero_page(self, p):
        return (p < self.data_first_pfn or p >= self.data_first_pfn + self.data_npages
                or bool(self.zero_every and p % self.zero_every == 0))

    def image_word(self, p, w):
        return 0 if self.is_zero_page(p) else mix(self.seed, p, w)


def _run(params, clone_id, input):
    """Run the guest workload; returns (result, pfns read or written,
    the clone's writes as {(pfn, word): value})."""
    first, n = params.data_first_pfn, params.data_npages
    overlay = {}    # the clone's private writes: (p, w) -> value
    touched = set()

    def read(p, w):
        touched.add(p)
        v = overlay.get((p, w))
        return params.image_word(p, w) if v is None else v

    s = 0
    for i in range(params.common_reads):
        s = (s * 31 + read(first + i * n // params.common_reads, i & 1023)) & M32
    x = (params.seed ^ ((clone_id * 2654435761) & M32) ^ input) & M32
    for _ in range(params.clone_reads):
        x = (x * 1664525 + 1013904223) & M32
        s = (s * 31 + read(first + (x >> 8) % n, x & 1023)) & M32
    for k in range(params.write_pages):
        p = first + (((x >> 4) + k * 97) & M32) % n
        overlay[(p, k & 1023)] = (clone_id ^ x ^ k) & M32   # not s: see workload.c
        s = (s * 31 + read(p, k & 1023)) & M32
    return s, touched, overlay


def expected_result(params, clone_id, input):
    return _run(params, clone_id & M32, input & M32)[0]


def pages_touched(params, clone_id, input):
    """Distinct pfns a clone can fault on: data pages it reads/writes plus
    every possible code page, the stack page and the params page."""
    touched = _run(params, clone_id & M32, input & M32)[1]
    return touched | set(CODE_PFNS) | {STACK_PFN, PARAMS_PFN}


def clone_writes(params, clone_id, input):
    """What a finished clone wrote: {(pfn, word): value} (its hostile
    phase undoes its own writes, so they do not show)."""
    return _run(params, clone_id & M32, input & M32)[2]


def pages_written(params, clone_id, input):
    """The data pages a clone writes (they must never change the image)."""
    first, n = params.data_first_pfn, params.data_npages
    x = (params.seed ^ ((clone_id * 2654435761) & M32) ^ input) & M32
    for _ in range(params.clone_reads):
        x = (x * 1664525 + 1013904223) & M32
    return {first + (((x >> 4) + k * 97) & M32) % n for k in range(params.write_pages)}


def page_sum(data):
    """The 64-bit word sum of a page, as lx_page_sums computes it."""
    return sum(struct.unpack("<512Q", data)) & 0xFFFFFFFFFFFFFFFF


def image_page(params, p):
    """The 4 KiB the image holds at page ``p``, for data pages."""
    return struct.pack("<1024I", *(params.image_word(p, w) for w in range(1024)))
