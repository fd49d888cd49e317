"""libxenstore through the cffi shim (``xenclone._xen``): blocking calls on
one handle, with Python values in and out.

``Handle.open()`` is ``xs_open(0)``: ``$XENSTORED_PATH`` if set, else
xenstored's socket, else /dev/xen/xenbus (xenstored in a stub domain).
Every method but ``fileno`` and ``check_watches`` waits on xenstored, so
``libclient`` runs them on its worker thread; those two only touch the
handle's local event queue.

Failures raise ``XenStoreError`` with the errno name (xenstored's error
strings are errno names, which libxenstore turns back into errno), or
``Disconnected`` when the connection is gone: libxenstore then closes its
descriptor, and this and every later call on the handle fails with EBADF.
"""

import errno
import os

from xenclone.xenstore.client import Disconnected
from xenclone.xenstore.wire import XenStoreError

# errno of a transport failure, never sent by xenstored (see xsd_errors).
_GONE = frozenset((errno.EBADF, errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN,
                   errno.ESHUTDOWN))

_PERM_BITS = {"n": 0, "r": 1, "w": 2, "b": 3}      # XS_PERM_READ 1, XS_PERM_WRITE 2
_PERM_LETTERS = {bits: letter for letter, bits in _PERM_BITS.items()}


def binding():
    """``(ffi, lib)`` of the shim, or raise ImportError where it lacks libxenstore."""
    from xenclone import _xen
    if not hasattr(_xen.lib, "xs_open"):
        raise ImportError("xenclone._xen was built without libxenstore")
    return _xen.ffi, _xen.lib


class Handle:
    """One ``struct xs_handle``; ``close()`` must come after every other call."""

    def __init__(self, ffi, lib, h):
        self._ffi, self._lib, self._h = ffi, lib, h

    @classmethod
    def open(cls):
        ffi, lib = binding()
        h = lib.xs_open(0)
        if h == ffi.NULL:
            raise Disconnected("xs_open: %s" % os.strerror(ffi.errno))
        return cls(ffi, lib, h)

    def close(self):
        if self._h is not None:
            h, self._h = self._h, None
            self._lib.xs_close(h)

    def _handle(self):
        if self._h is None:
            raise Disconnected("handle closed")
        return self._h

    def _fail(self, what):
        err = self._ffi.errno
        if err in _GONE:
            raise Disconnected("%s: %s" % (what, os.strerror(err)))
        raise XenStoreError(errno.errorcode.get(err, "EIO"), what)

    def _owned(self, ptr, what):
        """A malloc'ed result, freed when the returned cdata is collected."""
        if ptr == self._ffi.NULL:
            self._fail(what)
        return self._ffi.gc(ptr, self._lib.free)

    def _ok(self, done, what):
        if not done:
            self._fail(what)

    # -- data: ``t`` is a transaction id, 0 outside one ------------------------

    def read(self, t, path):
        size = self._ffi.new("unsigned int *")
        value = self._owned(self._lib.xs_read(self._handle(), t, path.encode(), size), path)
        return self._ffi.buffer(value, size[0])[:]

    def write(self, t, path, value):
        self._ok(self._lib.xs_write(self._handle(), t, path.encode(), value, len(value)), path)

    def mkdir(self, t, path):
        self._ok(self._lib.xs_mkdir(self._handle(), t, path.encode()), path)

    def rm(self, t, path):
        self._ok(self._lib.xs_rm(self._handle(), t, path.encode()), path)

    def directory(self, t, path):
        num = self._ffi.new("unsigned int *")
        names = self._owned(self._lib.xs_directory(self._handle(), t, path.encode(), num),
                            path)
        return [self._ffi.string(names[i]).decode() for i in range(num[0])]

    def get_perms(self, t, path):
        num = self._ffi.new("unsigned int *")
        perms = self._owned(self._lib.xs_get_permissions(self._handle(), t, path.encode(),
                                                         num), path)
        return ["%s%d" % (_PERM_LETTERS[p.perms & 3], p.id)
                for p in (perms[i] for i in range(num[0]))]

    def set_perms(self, t, path, perms):
        """``perms`` like ``["n5", "r0"]``, as XenStoreClient.set_perms."""
        array = self._ffi.new("struct xs_permissions[]", len(perms))
        for entry, text in zip(array, perms):
            if text[:1] not in _PERM_BITS or not text[1:].isdigit():
                raise XenStoreError("EINVAL", "bad permission %r" % (text,))
            entry.perms, entry.id = _PERM_BITS[text[0]], int(text[1:])
        self._ok(self._lib.xs_set_permissions(self._handle(), t, path.encode(), array,
                                              len(perms)), path)

    def write_nodes(self, t, nodes):
        """``(path, value, perms)`` written in order, perms set unless None."""
        for path, value, perms in nodes:
            self.write(t, path, value)
            if perms is not None:
                self.set_perms(t, path, perms)

    # -- watches ---------------------------------------------------------------

    def watch(self, path, token):
        self._ok(self._lib.xs_watch(self._handle(), path.encode(), token.encode()), path)

    def unwatch(self, path, token):
        self._ok(self._lib.xs_unwatch(self._handle(), path.encode(), token.encode()), path)

    def fileno(self):
        """The pipe that turns readable when events are queued."""
        fd = self._lib.xs_fileno(self._handle())
        if fd < 0:
            self._fail("xs_fileno")
        return fd

    def check_watches(self):
        """The queued ``(path, token)`` events; never waits."""
        events = []
        while True:
            event = self._lib.xs_check_watch(self._handle())
            if event == self._ffi.NULL:
                if self._ffi.errno != errno.EAGAIN:
                    # EINVAL here means libxenstore's reader met a dead connection.
                    raise Disconnected("xs_check_watch: %s" % os.strerror(self._ffi.errno))
                return events
            event = self._ffi.gc(event, self._lib.free)
            events.append((self._ffi.string(event[self._lib.XS_WATCH_PATH]).decode(),
                           self._ffi.string(event[self._lib.XS_WATCH_TOKEN]).decode()))

    # -- transactions and domains -------------------------------------------------

    def transaction_start(self):
        t = self._lib.xs_transaction_start(self._handle())
        if t == self._lib.XBT_NULL:
            self._fail("transaction start")
        return t

    def transaction_end(self, t, abort):
        self._ok(self._lib.xs_transaction_end(self._handle(), t, abort), "transaction end")

    def introduce(self, domid, mfn, evtchn):
        self._ok(self._lib.xs_introduce_domain(self._handle(), domid, mfn, evtchn),
                 "introduce %d" % domid)

    def release(self, domid):
        self._ok(self._lib.xs_release_domain(self._handle(), domid), "release %d" % domid)

    def resume(self, domid):
        self._ok(self._lib.xs_resume_domain(self._handle(), domid), "resume %d" % domid)

    def set_target(self, domid, target):
        self._ok(self._lib.xs_set_target(self._handle(), domid, target),
                 "set target %d" % domid)

    def get_domain_path(self, domid):
        path = self._owned(self._lib.xs_get_domain_path(self._handle(), domid),
                           "domain path %d" % domid)
        return self._ffi.string(path).decode()

    def is_domain_introduced(self, domid):
        # False both for "F" and for a failure: errno, cleared first, tells them apart.
        self._ffi.errno = 0
        if self._lib.xs_is_domain_introduced(self._handle(), domid):
            return True
        if self._ffi.errno:
            self._fail("is introduced %d" % domid)
        return False
