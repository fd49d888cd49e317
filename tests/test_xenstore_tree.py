"""The XenStore database: paths, permissions, quotas, transactions, watches."""

from twisted.trial import unittest

from xenclone.xenstore.tree import Caller, Quota, Store
from xenclone.xenstore.wire import XenStoreError


def caller(domid):
    c = Caller(domid)
    c.events = []
    c.deliver = lambda path, token: c.events.append((path, token))
    return c


class StoreCase(unittest.TestCase):
    def setUp(self):
        self.store = Store(Quota(nodes=20, watches=3, transactions=2))
        self.dom0, self.dom5, self.dom6 = caller(0), caller(5), caller(6)
        for domid in (5, 6):
            home = "/local/domain/%d" % domid
            self.store.mkdir(self.dom0, home)
            self.store.set_perms(self.dom0, home, ["n%d" % domid])

    def fails(self, code, fn, *args):
        e = self.assertRaises(XenStoreError, fn, *args)
        self.assertEqual(e.code, code)


class DataTests(StoreCase):
    def test_write_creates_parents_and_reads_back(self):
        s = self.store
        s.write(self.dom0, "/a/b/c", b"v\0x")
        self.assertEqual(s.read(self.dom0, "/a/b/c"), b"v\0x")
        self.assertEqual(s.read(self.dom0, "/a/b"), b"")
        s.write(self.dom0, "/a/z", b"")
        self.assertEqual(s.directory(self.dom0, "/a"), ["b", "z"])

    def test_mkdir_keeps_value(self):
        self.store.write(self.dom0, "/m", b"keep")
        self.store.mkdir(self.dom0, "/m")
        self.assertEqual(self.store.read(self.dom0, "/m"), b"keep")

    def test_rm(self):
        s = self.store
        s.write(self.dom0, "/r/x/y", b"1")
        s.rm(self.dom0, "/r/x")
        self.assertEqual(s.directory(self.dom0, "/r"), [])
        self.fails("ENOENT", s.read, self.dom0, "/r/x/y")
        s.rm(self.dom0, "/r/x")                 # missing, parent exists: fine
        self.fails("ENOENT", s.rm, self.dom0, "/r/x/y")
        self.fails("EINVAL", s.rm, self.dom0, "/")

    def test_invalid_paths(self):
        for bad in ("/a//b", "/a/", "/a b", "/a\u00e9", "/" + "x" * 3072, "", "@foo"):
            self.fails("EINVAL", self.store.write, self.dom0, bad, b"")
        self.store.write(self.dom0, "/" + "x" * 3071, b"")    # 3072 is allowed

    def test_value_limit(self):
        self.store.write(self.dom0, "/v", b"x" * 4096)
        self.fails("E2BIG", self.store.write, self.dom0, "/v", b"x" * 4097)

    def test_relative_paths_resolve_to_home(self):
        self.store.write(self.dom5, "data/x", b"1")
        self.assertEqual(self.store.read(self.dom0, "/local/domain/5/data/x"), b"1")
        self.assertEqual(self.store.read(self.dom5, "data/x"), b"1")

    def test_directory_part_generation_changes(self):
        s = self.store
        s.mkdir(self.dom0, "/g")
        gen, children = s.directory_part(self.dom0, "/g")
        s.write(self.dom0, "/g/c", b"")
        gen2, children2 = s.directory_part(self.dom0, "/g")
        self.assertEqual((children, children2), ((), ("c",)))
        self.assertNotEqual(gen, gen2)


class PermissionTests(StoreCase):
    def test_guest_cannot_see_other_domains(self):
        s = self.store
        s.write(self.dom0, "/local/domain/6/secret", b"s")
        for path in ("/local/domain/6", "/local/domain/6/secret", "/local/domain/6/missing",
                     "/tool", "/local/domain", "/nothing"):
            self.fails("EACCES", s.read, self.dom5, path)
            self.fails("EACCES", s.directory, self.dom5, path)
        self.fails("EACCES", s.write, self.dom5, "/local/domain/6/x", b"")
        self.fails("EACCES", s.write, self.dom5, "/tool/x", b"")
        self.fails("EACCES", s.rm, self.dom5, "/local/domain/6/secret")
        self.fails("EACCES", s.rm, self.dom5, "/local/domain/6/missing")
        self.fails("EACCES", s.get_perms, self.dom5, "/local/domain/6")
        # ENOENT where the guest may look.
        self.fails("ENOENT", s.read, self.dom5, "/local/domain/5/missing")

    def test_guest_owns_what_it_creates(self):
        s = self.store
        s.set_perms(self.dom0, "/local/domain/5", ["n0", "b5", "r6"])
        s.write(self.dom5, "/local/domain/5/dev/x", b"1")
        self.assertEqual(s.get_perms(self.dom0, "/local/domain/5/dev/x"), ["n5", "b5", "r6"])
        self.assertEqual(s.read(self.dom6, "/local/domain/5/dev/x"), b"1")
        self.fails("EACCES", s.write, self.dom6, "/local/domain/5/dev/x", b"2")

    def test_listed_permissions(self):
        s = self.store
        s.write(self.dom0, "/shared/ro", b"r")
        s.set_perms(self.dom0, "/shared/ro", ["n0", "r5", "w6"])
        self.assertEqual(s.read(self.dom5, "/shared/ro"), b"r")
        self.fails("EACCES", s.write, self.dom5, "/shared/ro", b"")
        s.write(self.dom6, "/shared/ro", b"w")
        self.fails("EACCES", s.read, self.dom6, "/shared/ro")
        s.set_perms(self.dom0, "/shared/ro", ["r0"])       # default for all: read
        self.assertEqual(s.read(self.dom6, "/shared/ro"), b"w")

    def test_set_perms_rules(self):
        s = self.store
        s.write(self.dom5, "mine", b"")
        s.set_perms(self.dom5, "mine", ["n5", "r6"])
        self.fails("EPERM", s.set_perms, self.dom5, "mine", ["n6"])
        s.set_perms(self.dom0, "/local/domain/5/mine", ["b5", "b6"])
        self.fails("EACCES", s.set_perms, self.dom6, "/local/domain/5/mine", ["b5"])
        for bad in ([], ["x5"], ["r"], ["r70000"]):
            self.fails("EINVAL", s.set_perms, self.dom0, "/local/domain/5/mine", bad)

    def test_target_acts_as_its_domain(self):
        s = self.store
        self.fails("EACCES", s.read, self.dom6, "/local/domain/5")
        s.set_target(self.dom0, 6, 5)
        s.write(self.dom6, "/local/domain/5/by-stubdom", b"1")
        self.fails("EACCES", s.set_target, self.dom5, 5, 6)


class QuotaTests(StoreCase):
    def test_node_quota_for_guests_only(self):
        s = self.store
        created = 1                             # the home itself counts
        while created < 20:
            s.write(self.dom5, "n%d" % created, b"")
            created += 1
        self.fails("ENOSPC", s.write, self.dom5, "one-more", b"")
        s.rm(self.dom5, "n1")
        s.write(self.dom5, "one-more", b"")
        for i in range(30):
            s.write(self.dom0, "/dom0/%d" % i, b"")

    def test_node_quota_checked_at_commit(self):
        s = self.store
        s.mkdir(self.dom5, "b")
        for i in range(16):
            s.write(self.dom5, "a/%d" % i, b"")      # with home, a and b: 19 nodes
        tx = s.begin(self.dom5)
        s.write(self.dom5, "b/in-tx", b"", tx)
        s.write(self.dom5, "a/outside", b"")        # the 20th, and no conflict
        self.fails("ENOSPC", s.end, self.dom5, tx, True)

    def test_watch_and_transaction_quotas(self):
        s = self.store
        for i in range(3):
            s.watch(self.dom5, "w%d" % i, "t")
        self.fails("E2BIG", s.watch, self.dom5, "w9", "t")
        s.begin(self.dom5)
        s.begin(self.dom5)
        self.fails("ENOSPC", s.begin, self.dom5)
        for i in range(5):
            s.watch(self.dom0, "/w%d" % i, "t")
            s.begin(self.dom0)


class TransactionTests(StoreCase):
    def test_isolation_and_commit(self):
        s = self.store
        s.write(self.dom0, "/t/a", b"old")
        tx = s.begin(self.dom0)
        s.write(self.dom0, "/t/a", b"new", tx)
        s.write(self.dom0, "/t/b", b"b", tx)
        self.assertEqual(s.read(self.dom0, "/t/a"), b"old")
        self.fails("ENOENT", s.read, self.dom0, "/t/b")
        s.end(self.dom0, tx, True)
        self.assertEqual(s.read(self.dom0, "/t/a"), b"new")
        self.assertEqual(s.directory(self.dom0, "/t"), ["a", "b"])

    def test_snapshot(self):
        s = self.store
        tx = s.begin(self.dom0)
        s.write(self.dom0, "/later", b"")
        self.fails("ENOENT", s.read, self.dom0, "/later", tx)
        self.fails("EAGAIN", s.end, self.dom0, tx, True)     # what it read changed

    def test_disjoint_transactions_both_commit(self):
        s = self.store
        s.mkdir(self.dom0, "/x")
        s.mkdir(self.dom0, "/y")
        tx1, tx2 = s.begin(self.dom0), s.begin(self.dom0)
        s.write(self.dom0, "/x/1", b"", tx1)
        s.write(self.dom0, "/y/2", b"", tx2)
        s.end(self.dom0, tx1, True)
        s.end(self.dom0, tx2, True)
        self.assertEqual((s.directory(self.dom0, "/x"), s.directory(self.dom0, "/y")), (["1"], ["2"]))

    def test_conflict_is_eagain(self):
        s = self.store
        s.write(self.dom0, "/c", b"0")
        tx = s.begin(self.dom0)
        value = s.read(self.dom0, "/c", tx)
        s.write(self.dom0, "/c", b"1")
        s.write(self.dom0, "/d", value + b"+1", tx)
        self.fails("EAGAIN", s.end, self.dom0, tx, True)
        self.fails("ENOENT", s.read, self.dom0, "/d")
        self.fails("ENOENT", s.end, self.dom0, tx, True)        # gone either way

    def test_abort_discards(self):
        s = self.store
        tx = s.begin(self.dom0)
        s.write(self.dom0, "/gone", b"", tx)
        s.end(self.dom0, tx, False)
        self.fails("ENOENT", s.read, self.dom0, "/gone")

    def test_rm_in_transaction(self):
        s = self.store
        s.write(self.dom0, "/tree/a/b", b"")
        tx = s.begin(self.dom0)
        s.rm(self.dom0, "/tree/a", tx)
        self.assertEqual(s.directory(self.dom0, "/tree"), ["a"])
        s.end(self.dom0, tx, True)
        self.assertEqual(s.directory(self.dom0, "/tree"), [])
        self.fails("ENOENT", s.read, self.dom0, "/tree/a/b")

    def test_transaction_belongs_to_its_caller(self):
        tx = self.store.begin(self.dom5)
        self.fails("ENOENT", self.store.read, self.dom6, "/local/domain/6", tx)
        self.store.reset(self.dom5)
        self.fails("ENOENT", self.store.end, self.dom5, tx, True)


class WatchTests(StoreCase):
    def test_fires_on_registration_and_on_changes_below(self):
        s = self.store
        s.watch(self.dom0, "/w", "tok")
        self.assertEqual(self.dom0.events, [("/w", "tok")])
        s.write(self.dom0, "/w/x", b"1")
        s.write(self.dom0, "/wx", b"1")             # not below /w
        s.set_perms(self.dom0, "/w/x", ["r0"])
        self.assertEqual(self.dom0.events[1:], [("/w/x", "tok"), ("/w/x", "tok")])

    def test_removal_of_a_parent_fires_the_watched_path(self):
        s = self.store
        s.write(self.dom0, "/p/q/r", b"")
        s.watch(self.dom0, "/p/q/r", "t")
        s.rm(self.dom0, "/p")
        self.assertEqual(self.dom0.events, [("/p/q/r", "t")] * 2)

    def test_transaction_fires_on_commit_only(self):
        s = self.store
        s.watch(self.dom0, "/tx", "t")
        del self.dom0.events[:]
        tx = s.begin(self.dom0)
        s.write(self.dom0, "/tx/a", b"", tx)
        self.assertEqual(self.dom0.events, [])
        s.end(self.dom0, tx, True)
        self.assertEqual(self.dom0.events, [("/tx/a", "t")])
        tx = s.begin(self.dom0)
        s.write(self.dom0, "/tx/b", b"", tx)
        s.end(self.dom0, tx, False)
        self.assertEqual(self.dom0.events, [("/tx/a", "t")])

    def test_relative_watch_gets_relative_paths(self):
        self.store.watch(self.dom5, "device", "d")
        self.store.write(self.dom0, "/local/domain/5/device/vif", b"")
        self.assertEqual(self.dom5.events, [("device", "d"), ("device/vif", "d")])

    def test_guest_sees_no_events_it_cannot_read(self):
        s = self.store
        s.watch(self.dom5, "/", "all")
        s.write(self.dom0, "/local/domain/6/secret", b"")
        s.write(self.dom5, "mine", b"")
        self.assertEqual(self.dom5.events, [("/", "all"), ("/local/domain/5/mine", "all")])

    def test_unwatch_and_duplicates(self):
        s = self.store
        s.watch(self.dom0, "/u", "t")
        self.fails("EEXIST", s.watch, self.dom0, "/u", "t")
        s.unwatch(self.dom0, "/u", "t")
        self.fails("ENOENT", s.unwatch, self.dom0, "/u", "t")
        s.write(self.dom0, "/u", b"")
        self.assertEqual(self.dom0.events, [("/u", "t")])

    def test_special_watches(self):
        s = self.store
        s.watch(self.dom0, "@introduceDomain", "i")
        s.watch(self.dom0, "@releaseDomain", "r")
        s.watch(self.dom0, "/", "all")
        s.watch(self.dom5, "@releaseDomain", "r")
        del self.dom0.events[:], self.dom5.events[:]
        s.introduce(self.dom0, 7)
        self.assertTrue(s.is_introduced(7))
        s.release(self.dom0, 7)
        self.assertFalse(s.is_introduced(7))
        self.assertEqual(self.dom0.events, [("@introduceDomain", "i"), ("@releaseDomain", "r")])
        self.assertEqual(self.dom5.events, [])
        self.fails("ENOENT", s.release, self.dom0, 7)
        self.fails("EACCES", s.introduce, self.dom5, 8)
        self.fails("EINVAL", s.introduce, self.dom0, 0)
