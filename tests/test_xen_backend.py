"""The Xen backend's parts that need no Xen: the guest's PVH note and
mailbox layout, the image state format, the xl choke point and the
controller's adoption of domain ids a backend assigns.  The backend on real
Xen is tests/test_xen_rig.py."""

import os
import re
import shutil
import stat
import struct
import tempfile

from twisted.internet import defer
from twisted.trial import unittest
from zope.interface import implementer

from xenclone import workload
from xenclone.backends.xen import xl
from xenclone.backends.xen.domains import Mailbox
from xenclone.backends.xen.image_state import pack_state, unpack_state
from xenclone.config import parse
from xenclone.control.controller import Controller
from xenclone.interfaces import FIRST_HANDLE, IDomainNumbering
from xenclone.ledger import Ledger
from xenclone.pager import Pager
from xenclone.policy.sharing import SharingPolicy
from xenclone.wire import WireError

from tests.fakes import FakeBackend, FakeImageData, FakeMemoryServer, FakeRegion, FakeSource

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUEST = os.path.join(ROOT, "guest")
SHT_NOTE, SHF_ALLOC, PT_LOAD = 7, 2, 1
XEN_ELFNOTE_PHYS32_ENTRY = 18


def elf32(path):
    """(sections as dicts with their names, PT_LOAD (offset, filesz), symbols)."""
    with open(path, "rb") as f:
        data = f.read()
    phoff, shoff = struct.unpack_from("<II", data, 0x1C)
    phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from("<HHHHH", data, 0x2A)
    loads = []
    for i in range(phnum):
        p_type, p_offset, _, _, p_filesz = struct.unpack_from("<5I", data, phoff + i * phentsize)
        if p_type == PT_LOAD:
            loads.append((p_offset, p_filesz))
    keys = "name type flags addr offset size link info align entsize".split()
    sections = [dict(zip(keys, struct.unpack_from("<10I", data, shoff + i * shentsize)))
                for i in range(shnum)]
    strtab = sections[shstrndx]

    def string(table, at):
        start = table["offset"] + at
        return data[start:data.index(b"\0", start)].decode()

    for s in sections:
        s["name"] = string(strtab, s["name"])
    symtab = next(s for s in sections if s["name"] == ".symtab")
    names = sections[symtab["link"]]
    symbols = {}
    for i in range(symtab["size"] // 16):
        st_name, st_value = struct.unpack_from("<II", data, symtab["offset"] + i * 16)
        symbols[string(names, st_name)] = st_value
    return data, sections, loads, symbols


class GuestTests(unittest.TestCase):
    """guest/build/guest.elf is a PVH kernel too, and the mailbox the
    backend reads is where the guest writes."""

    def setUp(self):
        self.elf = os.path.join(GUEST, "build", "guest.elf")
        if not os.path.exists(self.elf):
            raise unittest.SkipTest("guest not built (make -C guest)")

    def test_pvh_entry_note(self):
        data, sections, loads, symbols = elf32(self.elf)
        notes = [s for s in sections if s["type"] == SHT_NOTE]
        self.assertEqual([s["name"] for s in notes], [".note.Xen"])
        note = notes[0]
        namesz, descsz, kind = struct.unpack_from("<3I", data, note["offset"])
        self.assertEqual((namesz, descsz, kind), (4, 4, XEN_ELFNOTE_PHYS32_ENTRY))
        self.assertEqual(data[note["offset"] + 12:note["offset"] + 16], b"Xen\0")
        entry, = struct.unpack_from("<I", data, note["offset"] + 16)
        self.assertEqual(entry, symbols["_start_pvh"])
        self.assertNotEqual(entry, symbols["_start"])
        # Not loaded: the flat guest.bin (KVM) does not carry it.
        self.assertFalse(note["flags"] & SHF_ALLOC)
        self.assertFalse(any(off <= note["offset"] < off + size for off, size in loads))

    def test_mailbox_layout_matches_the_guest(self):
        with open(os.path.join(GUEST, "workload.c")) as f:
            source = f.read()
        define = dict(re.findall(r"#define (MAILBOX\w*)\s+(0x[0-9a-fA-F]+)", source))
        self.assertEqual(int(define["MAILBOX"], 16),
                         workload.PARAMS_ADDR + workload.MAILBOX_OFFSET)
        self.assertEqual(int(define["MAILBOX_START_INFO"], 16),
                         workload.PARAMS_ADDR + workload.MAILBOX_OFFSET
                         + 4 * workload.MAILBOX_FIELDS.index("start_info"))
        fields = re.search(r"struct mailbox \{\s*uint32_t ([^;]+);", source).group(1)
        self.assertEqual(tuple(f.strip() for f in fields.split(",")), workload.MAILBOX_FIELDS)
        self.assertEqual(workload.MAILBOX.size, 4 * len(workload.MAILBOX_FIELDS))


class _Page:
    """A mapped page, as Mailbox sees one."""

    def __init__(self):
        self.buffer = bytearray(workload.PAGE_SIZE)
        self.closed = False

    def close(self):
        self.closed = True


class MailboxTests(unittest.TestCase):
    def test_fields_land_where_the_guest_reads_them(self):
        page = _Page()
        box = Mailbox(page)
        box.write(clone_id=5, input=0x10001, go=1)
        at = workload.MAILBOX_OFFSET
        self.assertEqual(struct.unpack_from("<4I", page.buffer, at), (0, 1, 5, 0x10001))
        self.assertEqual(box.read(), dict(zip(workload.MAILBOX_FIELDS, (0, 1, 5, 0x10001, 0, 0, 0))))
        self.assertEqual(bytes(page.buffer[:at]), bytes(at))    # the params stay
        box.close()
        self.assertTrue(page.closed)


class StateTests(unittest.TestCase):
    def test_xl_settings_travel_with_the_hvm_record(self):
        config = {"name": "m", "type": "pvh", "memory": 16, "kernel": "/k"}
        record = bytes(range(256)) * 3
        self.assertEqual(unpack_state(pack_state(config, record)), (config, "guest", record))
        self.assertEqual(unpack_state(pack_state(config, record, "linux")),
                         (config, "linux", record))

    def test_config_text_is_xl_syntax(self):
        config = {"name": "a.1", "type": "pvh", "memory": 16, "extra": 'say "hi"'}
        parsed = {e.key: e.value for e in parse(xl.config_text(config))}
        self.assertEqual(parsed, config)


class XlTests(unittest.TestCase):
    """The choke point: xl's failures and hangs become WireErrors."""

    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="xenclone-xl-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.patch(xl, "XL", os.path.join(self.tmp, "xl"))

    def fake_xl(self, body):
        with open(xl.XL, "w") as f:
            f.write("#!/bin/sh\n" + body + "\n")
        os.chmod(xl.XL, stat.S_IRWXU)

    def run_xl(self, *args, timeout=10.0):
        from twisted.internet import reactor
        return xl.run(reactor, list(args), timeout=timeout)

    @defer.inlineCallbacks
    def test_output(self):
        self.fake_xl('echo "$@"')
        out = yield self.run_xl("domid", "m")
        self.assertEqual(out, "domid m\n")

    @defer.inlineCallbacks
    def test_failure_names_xl_and_its_message(self):
        self.fake_xl('echo "Parsing config" >&2; echo "domain m: bad kernel" >&2; exit 3')
        with self.assertRaises(WireError) as cm:
            yield self.run_xl("create", "-p", "m.cfg")
        self.assertEqual(cm.exception.code, "xl-failed")
        self.assertIn("create -p m.cfg: domain m: bad kernel", str(cm.exception))

    @defer.inlineCallbacks
    def test_hang_is_killed(self):
        self.fake_xl("exec sleep 30")
        with self.assertRaises(WireError) as cm:
            yield self.run_xl("create", "m.cfg", timeout=0.5)
        self.assertEqual(cm.exception.code, "xl-timeout")


@implementer(IDomainNumbering)
class _NumberingBackend(FakeBackend):
    """A backend that numbers domains itself, as Xen does."""

    def __init__(self):
        super().__init__()
        self.next_id = 7

    def _number(self):
        self.next_id += 1
        return self.next_id

    def create_master(self, spec):
        domid = self._number()
        self.states[domid] = "ready"
        return defer.succeed({"domid": domid, "state": "ready"})

    def launch(self, image, clone):
        self.last_clone = clone
        domid = self._number()
        self.states[domid] = "running"
        region = self.regions[domid] = FakeRegion(domid, image.npages)
        return defer.succeed(region)


class AdoptionTests(unittest.TestCase):
    def setUp(self):
        self.backend = _NumberingBackend()
        source = FakeSource()
        self.store = tempfile.mkdtemp(prefix="xenclone-store-")
        self.addCleanup(shutil.rmtree, self.store, True)
        pager = Pager(None, Ledger(1000, SharingPolicy()), source, self.backend,
                      FakeMemoryServer(), self.store)
        self.controller = Controller(None, self.backend, FakeMemoryServer(), pager, None)

    @defer.inlineCallbacks
    def test_master_and_clone_take_the_backends_ids(self):
        master = yield self.controller.op_create({"config": {"name": "m", "memory": 4}})
        self.assertEqual(master["domid"], 8)
        self.assertEqual(self.controller.op_info({"domain": 8})["name"], "m")
        self.assertEqual(self.controller.op_info({"domain": "m"})["domid"], 8)
        image = FakeImageData(1024)
        self.controller._images["img"] = image
        launched = yield self.controller.op_launch({"image": "img", "count": 2})
        self.assertEqual([c["domid"] for c in launched["clones"]], [9, 10])
        self.assertEqual(sorted(self.controller.domains), [8, 9, 10])
        # The clone's input was its handle, above any id the backend gives.
        self.assertGreaterEqual(self.backend.last_clone.input, FIRST_HANDLE)
        self.assertEqual(self.controller.op_info({"domain": 10})["input"],
                         self.backend.last_clone.input)
