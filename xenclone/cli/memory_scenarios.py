"""Self-tests of the page-sharing ledger on this host: sharing, limit,
page-out and budget.  Every memory figure they judge by comes from the
kernel (pagemap of the VMM host, memfd blocks), and the ledger's own
counters are checked against it."""

from twisted.internet import defer, task

SLACK = 256     # pages: one credit batch, the budget's only slack


class KernelSampler:
    """Samples the daemon's kernel view of clone memory every ``interval``."""

    def __init__(self, s, interval=0.1):
        self.s = s
        self.samples = []
        self._busy = False
        self._loop = task.LoopingCall(self.sample)
        self._loop.clock = s.reactor
        self._loop.start(interval)

    @defer.inlineCallbacks
    def sample(self):
        if self._busy:
            return
        self._busy = True
        try:
            host = yield self.s.call("host")
            self.samples.append(host["kernel"])
        finally:
            self._busy = False

    def stop(self):
        self._loop.stop()

    def peak(self, key):
        return max((k[key] for k in self.samples), default=0)

    def peak_clone(self, domid):
        return max((c["shared"] + c["private"] for k in self.samples
                    for d, c in k["clones"].items() if int(d) == domid), default=0)


@defer.inlineCallbacks
def _master(s, name, memory, **workload):
    yield s.call("create", config=dict({"name": name + "-master", "memory": memory}, **workload))
    image = yield s.call("bless", domain=name + "-master", name=name)
    return image


@defer.inlineCallbacks
def _cleanup(s, name):
    yield s.call("discard", image=name, force=True)
    yield s.call("destroy", domain=name + "-master")


@defer.inlineCallbacks
def _answers_right(s, clones):
    infos = []
    for c in clones:
        infos.append((yield s.call("wait", domain=c["domid"], timeout=600)))
    return all(i["result"] == i["expected"] for i in infos), infos


@defer.inlineCallbacks
def scenario_sharing(s, n=8):
    """N hoarded clones share one image: resident/allocated > 0.8*N."""
    yield _master(s, "sel-share", 16)
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
    right, infos = yield _answers_right(s, clones)
    after = (yield s.call("host"))["kernel"]
    yield _cleanup(s, "sel-share")
    return ({"ratio_over_0.8N": ratio > 0.8 * n, "answers_right": right,
             "cow_after_writes": after["private_pages"] > 0, "ledger_matches_kernel": ledger_agrees},
            {"resident_over_allocated": round(ratio, 2), "clones": n,
             "kernel_private_after": after["private_pages"]})


@defer.inlineCallbacks
def scenario_limit(s, limit=1024):
    """A clone under limit L writes 2L pages: resident <= L + 256, right."""
    yield _master(s, "sel-limit", 32, write_pages=2 * limit)
    [clone] = (yield s.call("launch", image="sel-limit", paused=True))["clones"]
    yield s.call("set", domain=clone["domid"],
                 knobs={"limit": limit, "evict": ["drop-clean", "page-out"]})
    sampler = KernelSampler(s)
    yield s.call("unpause", domain=clone["domid"])
    right, [info] = yield _answers_right(s, [clone])
    yield sampler.sample()
    sampler.stop()
    peak = sampler.peak_clone(clone["domid"])
    yield _cleanup(s, "sel-limit")
    return ({"answers_right": right, "within_limit": 0 < peak <= limit + SLACK,
             "paged_out": info["evictions"]["page-out"] > 0},
            {"limit_pages": limit, "peak_resident_pages": peak, "samples": len(sampler.samples),
             "evictions": info["evictions"]})


@defer.inlineCallbacks
def scenario_pageout(s):
    """Most pages written, evicted to a low target, hoarded back: intact."""
    yield _master(s, "sel-pageout", 16, write_pages=3000)
    [clone] = (yield s.call("launch", image="sel-pageout"))["clones"]
    right, [info] = yield _answers_right(s, [clone])
    pfns = list(range(info["nominal_pages"]))
    before = (yield s.call("page_sums", domain=clone["domid"], pfns=pfns))["sums"]
    yield s.call("set", domain=clone["domid"], knobs={"evict": ["drop-clean", "page-out"]})
    evicted = yield s.call("evict", domain=clone["domid"], to=200)
    low = (yield s.call("host"))["kernel"]["clones"][str(clone["domid"])]
    yield s.call("hoard", domain=clone["domid"], rate=10**6, wait=True)
    after = (yield s.call("page_sums", domain=clone["domid"], pfns=pfns))["sums"]
    yield _cleanup(s, "sel-pageout")
    return ({"answers_right": right, "paged_out": evicted["paged_out_pages"] > 0 or
             evicted["evictions"]["page-out"] > 0,
             "kernel_shows_eviction": low["private"] + low["shared"] <= 200 + SLACK,
             "memory_intact": before == after},
            {"pages_checked": len(pfns), "paged_out": evicted["evictions"]["page-out"],
             "kernel_after_evict": low})


@defer.inlineCallbacks
def scenario_budget(s, n=16):
    """16 clones under a budget below their working set: right, within it."""
    image = yield _master(s, "sel-budget", 32, write_pages=64)
    budget = image["nonzero_pages"] // 2
    before = (yield s.call("host"))["ledger"]["budget_pages"]
    yield s.call("set_host", budget_pages=budget)
    sampler = KernelSampler(s)
    try:
        clones = (yield s.call("launch", image="sel-budget", count=n))["clones"]
        right, _ = yield _answers_right(s, clones)
        yield sampler.sample()
    finally:
        sampler.stop()
        yield s.call("set_host", budget_pages=before)
    peak = sampler.peak("allocated_pages")
    yield _cleanup(s, "sel-budget")
    return ({"answers_right": right, "within_budget": peak <= budget + SLACK},
            {"budget_pages": budget, "peak_allocated_pages": peak,
             "samples": len(sampler.samples)})


SCENARIOS = {
    "sharing": scenario_sharing,
    "limit": scenario_limit,
    "pageout": scenario_pageout,
    "budget": scenario_budget,
}
