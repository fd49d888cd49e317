"""Self-tests of the page-sharing ledger on this host: sharing, limit,
page-out and budget.  Every memory figure they judge by comes from the
kernel (pagemap of the VMM host, memfd blocks), and the ledger's own
counters are checked against it."""

import subprocess
import sys

from twisted.internet import defer, task

SLACK = 256     # pages: one credit batch, the budget's only slack


class KernelSampler:
    """Samples the daemon's kernel view of clone memory every ``interval``."""

    def __init__(self, s, interval=0.1):
        self.s = s
        self.samples = []
        self.times = []
        self._busy = None
        self._loop = task.LoopingCall(self.sample)
        self._loop.clock = s.reactor
        self._loop.start(interval)

    def sample(self):
        if self._busy is None:
            self._busy = self.s.call("host").addCallback(self._took)
            self._busy.addBoth(self._idle)
        return self._busy

    def _took(self, host):
        self.samples.append(host["kernel"])
        self.times.append(self.s.reactor.seconds())

    def _idle(self, result):
        self._busy = None
        return result

    def stop(self):
        """Deferred: the sample in flight, if any, has landed."""
        self._loop.stop()
        return self._busy if self._busy is not None else defer.succeed(None)

    def max_gap_ms(self):
        gaps = [b - a for a, b in zip(self.times, self.times[1:])]
        return round(max(gaps, default=0) * 1000, 1)

    def peak(self, key):
        return max((k[key] for k in self.samples), default=0)

    def peak_clone(self, domid):
        return max((c["shared"] + c["private"] for k in self.samples
                    for d, c in k["clones"].items() if int(d) == domid), default=0)


class HostSampler:
    """``hostmem.clone_pages`` (the kernel's count of what the ledger
    calls allocated) every ``interval``, from a process of its own."""

    def __init__(self, pids, interval=0.1):
        self.samples, self.times = [], []
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "xenclone.hostmem", str(pids["vmmhost"]),
             str(pids["memserver"]), str(interval)], stdout=subprocess.PIPE, text=True)

    def stop(self):
        self._proc.terminate()
        out, _ = self._proc.communicate()
        for line in out.splitlines():
            t, pages = line.split()
            self.times.append(float(t))
            self.samples.append(int(pages))

    def peak(self):
        return max(self.samples, default=0)

    def gaps_ms(self):
        """Median and largest interval between samples: the median is
        the sampler's own period; the largest, how loaded the host was."""
        gaps = sorted(b - a for a, b in zip(self.times, self.times[1:])) or [0]
        return round(gaps[len(gaps) // 2] * 1000, 1), round(gaps[-1] * 1000, 1)


@defer.inlineCallbacks
def bless_master(s, name, memory, **workload):
    yield s.call("create", config=dict({"name": name + "-master", "memory": memory}, **workload))
    image = yield s.call("bless", domain=name + "-master", name=name)
    return image


@defer.inlineCallbacks
def _cleanup(s, name):
    yield s.call("discard", image=name, force=True)
    yield s.call("destroy", domain=name + "-master")


@defer.inlineCallbacks
def answers_right(s, clones):
    infos = []
    for c in clones:
        infos.append((yield s.call("wait", domain=c["domid"], timeout=600)))
    return all(i["result"] == i["expected"] for i in infos), infos


@defer.inlineCallbacks
def disagreements(s, clones):
    """Pages of these (quiet) clones where ledger, fault path and kernel
    disagree; each must be none."""
    bad = 0
    for c in clones:
        bad += (yield s.call("audit", domain=c["domid"]))["disagree"]
    return bad


@defer.inlineCallbacks
def scenario_sharing(s, n=8):
    """N hoarded clones share one image: resident/allocated > 0.8*N."""
    yield bless_master(s, "sel-share", 16)
    clones = (yield s.call("launch", image="sel-share", count=n, paused=True))["clones"]
    for c in clones:
        yield s.call("hoard", domain=c["domid"], rate=10**6, wait=True)
    host = yield s.call("host")
    kernel = host["kernel"]
    ratio = kernel["resident_pages"] / max(1, kernel["allocated_pages"])
    ledger_agrees = True
    for d, c in kernel["clones"].items():
        info = yield s.call("info", domain=int(d))
        ledger_agrees = ledger_agrees and info["shared_pages"] == c["shared"]
    for c in clones:
        yield s.call("unpause", domain=c["domid"])
    right, infos = yield answers_right(s, clones)
    after = (yield s.call("host"))["kernel"]
    yield _cleanup(s, "sel-share")
    return ({"ratio_over_0.8N": ratio > 0.8 * n, "answers_right": right,
             "cow_after_writes": after["private_pages"] > 0, "ledger_matches_kernel": ledger_agrees},
            {"resident_over_allocated": round(ratio, 2), "clones": n,
             "kernel_private_after": after["private_pages"]})


@defer.inlineCallbacks
def scenario_limit(s, limit=1024):
    """A clone under limit L writes 2L pages: resident <= L + 256, right."""
    yield bless_master(s, "sel-limit", 32, write_pages=2 * limit)
    [clone] = (yield s.call("launch", image="sel-limit", paused=True))["clones"]
    yield s.call("set", domain=clone["domid"],
                 knobs={"limit": limit, "evict": ["drop-clean", "page-out"]})
    sampler = KernelSampler(s)
    yield s.call("unpause", domain=clone["domid"])
    right, [info] = yield answers_right(s, [clone])
    yield sampler.sample()
    yield sampler.stop()
    peak = sampler.peak_clone(clone["domid"])
    bad = yield disagreements(s, [clone])
    yield _cleanup(s, "sel-limit")
    return ({"answers_right": right, "within_limit": 0 < peak <= limit + SLACK,
             "paged_out": info["evictions"]["page-out"] > 0, "ledger_matches_kernel": bad == 0},
            {"limit_pages": limit, "peak_resident_pages": peak, "samples": len(sampler.samples),
             "max_sample_gap_ms": sampler.max_gap_ms(), "evictions": info["evictions"],
             "pages_disagreeing": bad})


@defer.inlineCallbacks
def scenario_pageout(s):
    """Most pages written, evicted to a low target, hoarded back: intact."""
    yield bless_master(s, "sel-pageout", 16, write_pages=3000)
    [clone] = (yield s.call("launch", image="sel-pageout"))["clones"]
    right, [info] = yield answers_right(s, [clone])
    pfns = list(range(info["nominal_pages"]))
    before = (yield s.call("page_sums", domain=clone["domid"], pfns=pfns))["sums"]
    yield s.call("set", domain=clone["domid"], knobs={"evict": ["drop-clean", "page-out"]})
    evicted = yield s.call("evict", domain=clone["domid"], to=200)
    low = (yield s.call("host"))["kernel"]["clones"][str(clone["domid"])]
    bad = yield disagreements(s, [clone])
    yield s.call("hoard", domain=clone["domid"], rate=10**6, wait=True)
    after = (yield s.call("page_sums", domain=clone["domid"], pfns=pfns))["sums"]
    bad += yield disagreements(s, [clone])
    yield _cleanup(s, "sel-pageout")
    return ({"answers_right": right, "paged_out": evicted["paged_out_pages"] > 0 or
             evicted["evictions"]["page-out"] > 0,
             "kernel_shows_eviction": low["private"] + low["shared"] <= 200 + SLACK,
             "memory_intact": before == after, "ledger_matches_kernel": bad == 0},
            {"pages_checked": len(pfns), "paged_out": evicted["evictions"]["page-out"],
             "kernel_after_evict": low, "pages_disagreeing": bad})


@defer.inlineCallbacks
def scenario_budget(s):
    """16 clones under a budget below their working set: right, within it."""
    return (yield _under_budget(s, "sel-budget", 16, 32, write_pages=64))


@defer.inlineCallbacks
def scenario_load(s):
    """64 clones fault at once under a budget that forces eviction."""
    return (yield _under_budget(s, "sel-load", 64, 16, write_pages=32, at_once=True))


@defer.inlineCallbacks
def _under_budget(s, name, n, memory, write_pages, at_once=False):
    """``n`` clones of a ``memory`` MiB master under a host budget of half
    the image; ``at_once``: all launched paused, then let go together."""
    image = yield bless_master(s, name, memory, write_pages=write_pages)
    budget = image["nonzero_pages"] // 2
    before = (yield s.call("host"))["ledger"]["budget_pages"]
    yield s.call("set_host", budget_pages=budget)
    for _ in range(100):     # the cache lets go of unmapped pages at once
        if (yield s.call("host"))["ledger"]["allocated_pages"] <= budget:
            break
        yield task.deferLater(s.reactor, 0.05, lambda: None)
    sampler = HostSampler((yield s.call("pids")))
    try:
        clones = (yield s.call("launch", image=name, count=n, paused=at_once))["clones"]
        if at_once:
            yield defer.gatherResults([s.call("unpause", domain=c["domid"]) for c in clones])
        right, _ = yield answers_right(s, clones)
        kernel = (yield s.call("host"))["kernel"]
        bad = yield disagreements(s, clones)
    finally:
        sampler.stop()
        yield s.call("set_host", budget_pages=before)
    peak = sampler.peak()
    median_gap, max_gap = sampler.gaps_ms()
    evictions = (yield s.call("host"))["ledger"]["evictions"]
    yield _cleanup(s, name)
    return ({"answers_right": right, "within_budget": peak <= budget + SLACK,
             "ledger_matches_kernel": bad == 0, "sampled_every_100ms": median_gap <= 110},
            {"budget_pages": budget, "peak_allocated_pages": peak, "samples": len(sampler.samples),
             "median_sample_gap_ms": median_gap, "max_sample_gap_ms": max_gap,
             "pages_disagreeing": bad, "final_sample_pages": sampler.samples[-1],
             "final_pagemap_pages": kernel["allocated_pages"], "clones": n,
             "host_evictions": evictions})


SCENARIOS = {
    "sharing": scenario_sharing,
    "limit": scenario_limit,
    "pageout": scenario_pageout,
    "budget": scenario_budget,
    "load": scenario_load,
}
