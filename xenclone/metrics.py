"""Prometheus text exposition (format 0.0.4) of the host and its clones.

    GET /metrics   the figures of ``host`` and of every clone's ledger account
                   (and a fork clone's hypervisor frames)

Built afresh for each scrape from the controller, so it shows exactly what
``xenclone host`` and ``xenclone info`` show.
"""

from twisted.application import strports
from twisted.internet import defer
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
CLONE_KINDS = (("shared", "shared_pages"), ("private", "private_pages"),
               ("zero", "zero_pages"), ("paged_out", "paged_out_pages"),
               ("resident", "resident_pages"))
HYPERVISOR_KINDS = ("own", "shared", "paged_out")     # IForkBackend.frames

log = Logger()


def _label(value):
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


class Exposition:
    """Collects samples grouped by metric, each group under one HELP/TYPE."""

    def __init__(self):
        self._families = {}

    def add(self, name, type_, help, value, labels=None):
        family = self._families.setdefault(name, (type_, help, []))
        family[2].append((labels or {}, value))

    def text(self):
        lines = []
        for name, (type_, help, samples) in self._families.items():
            lines.append("# HELP %s %s" % (name, help.replace("\\", "\\\\").replace("\n", "\\n")))
            lines.append("# TYPE %s %s" % (name, type_))
            for labels, value in samples:
                tags = ",".join('%s="%s"' % (k, _label(v)) for k, v in sorted(labels.items()))
                lines.append("%s%s %d" % (name, "{%s}" % tags if tags else "", value))
        return "\n".join(lines) + "\n"


@defer.inlineCallbacks
def collect(controller):
    host = yield defer.maybeDeferred(controller.op_host, {})
    ledger, kernel = host["ledger"], host["kernel"]
    x = Exposition()
    x.add("xenclone_host_budget_pages", "gauge", "Host memory budget of the ledger, in pages.",
          ledger["budget_pages"])
    for source, figures in (("ledger", ledger), ("kernel", kernel)):
        x.add("xenclone_host_allocated_pages", "gauge",
              "Host pages held for clones: image caches plus private pages.",
              figures["allocated_pages"], {"source": source})
    x.add("xenclone_host_resident_pages", "gauge",
          "Pages mapped into clones (kernel pagemap); a shared page counts once per clone.",
          kernel["resident_pages"])
    for cls, n in sorted(ledger["evictions"].items()):
        x.add("xenclone_evictions_total", "counter",
              "Pages evicted from the live clones, by eviction class.", n, {"class": cls})
    for domid, dom in sorted(controller.domains.items()):
        stats = controller.pager.stats(domid) if dom.role == "clone" else None
        if stats is None:      # launched but not yet attached to the pager
            continue
        for kind, key in CLONE_KINDS:
            x.add("xenclone_clone_pages", "gauge", "A clone's pages by kind, from the ledger.",
                  stats[key], {"domain": dom.name, "kind": kind})
        x.add("xenclone_clone_faults_total", "counter", "Faults served to a clone.",
              stats["faults"], {"domain": dom.name})
        if dom.fill_mode == "fork":
            frames = yield controller.backend.frames(domid)
            for kind in HYPERVISOR_KINDS:
                x.add("xenclone_clone_hypervisor_pages", "gauge",
                      "A fork clone's pages as the hypervisor counts them.", frames[kind],
                      {"domain": dom.name, "kind": kind})
    return x.text()


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, controller):
        super().__init__()
        self.controller = controller

    def render_GET(self, request):
        if request.path != b"/metrics":
            request.setResponseCode(404)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"not found: the metrics are at /metrics\n"
        gone = []
        request.notifyFinish().addErrback(gone.append)

        def send(text):
            request.setHeader(b"content-type", CONTENT_TYPE)
            return text.encode()

        def failed(f):
            log.failure("building /metrics failed", f)
            request.setResponseCode(500)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            first = (f.getErrorMessage().splitlines() or [""])[0]
            return ("error building metrics: %s: %s\n" % (f.type.__name__, first)).encode()

        def finish(body):
            if not gone:     # the scraper hung up meanwhile
                request.write(body)
                request.finish()

        collect(self.controller).addCallbacks(send, failed).addCallback(finish)
        return NOT_DONE_YET


class _QuietSite(Site):
    noisy = False

    def log(self, request):
        """No access log: a scrape every few seconds would flood the daemon's."""


def make_metrics_site(controller):
    return _QuietSite(MetricsResource(controller))


def make_metrics_service(reactor, controller, port_desc):
    """An IService listening on ``port_desc`` (a strports description such
    as ``tcp:9577:interface=127.0.0.1``)."""
    return strports.service(port_desc, make_metrics_site(controller), reactor=reactor)
