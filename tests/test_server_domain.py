"""The memory-server domain's bookkeeping (plain Python): which frames hold
which image, frames tied to refs, grant frames from the domain's size.
Real grants on real Xen: rig/jobs/grant.py, in tests/test_xen_rig.py."""

from twisted.trial import unittest

from xenclone.backends.xen import server_domain as sd


class SlotsTests(unittest.TestCase):
    def test_first_fit_reuses_freed_runs_and_refuses_what_does_not_fit(self):
        slots = sd.Slots(100)
        a, b, c = slots.take(30), slots.take(30), slots.take(30)
        self.assertEqual([r.first for r in (a, b, c)], [0, 30, 60])
        self.assertIsNone(slots.take(11))
        slots.give_back(b)
        self.assertEqual(slots.take(20), sd.Run(30, 20))
        self.assertEqual(slots.take(10), sd.Run(50, 10))
        self.assertEqual(slots.take(10), sd.Run(90, 10))
        self.assertEqual(slots.free(), 0)

    def test_runs_kept_across_a_restart_are_not_handed_out(self):
        slots = sd.Slots(10)
        slots.keep(sd.Run(2, 5))
        self.assertEqual(slots.take(2), sd.Run(0, 2))
        self.assertEqual(slots.take(3), sd.Run(7, 3))
        self.assertIsNone(slots.take(1))


class GrantLayoutTests(unittest.TestCase):
    def test_frames_and_refs_are_tied(self):
        run = sd.Run(5, 3)
        self.assertEqual(list(run.gfns), [sd.FIRST_GFN + 5 + i for i in range(3)])
        self.assertEqual(list(run.refs), [sd.FIRST_REF + 5 + i for i in range(3)])
        self.assertEqual(run.xenstore(), "%d 3" % (sd.FIRST_REF + 5))

    def test_grant_frames_cover_every_usable_frame(self):
        # 96 MiB: 24576 frames, 23552 usable, refs up to 64 + 23552 -> 47 frames.
        self.assertEqual(sd.usable_pages(96), 23552)
        self.assertEqual(sd.grant_frames(96), 47)
        self.assertGreater(sd.grant_frames(512), sd.DEFAULT_GNTTAB_MAX_FRAMES)
        settings = sd.xl_settings("ms", "/k", 96)
        self.assertEqual((settings["max_grant_frames"], settings["memory"]), (47, 96))
