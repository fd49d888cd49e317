"""Configuration files in xl.cfg syntax: the daemon's and domains'.

    KEY = VALUE        # one setting per line; ';' may end or separate them
    VALUE: "string" or 'string' (escapes \\\\ \\" \\' \\n), 123 or 0x7b,
           [ "a", 1, ... ] (may span lines; a trailing comma is allowed)

Values are parsed, never evaluated.  Each kind of file has ONE table of
known keys (type, default, one-line doc) that drives validation, defaults
and the shipped commented-out file:

    python -m xenclone.config --print-default > config/xenclone.conf
"""

import difflib
import grp
import os
import sys
from collections import namedtuple

from xenclone import xl_keys
from xenclone import xl_devices as devices
from xenclone.names import check_name
from xenclone.wire import WireError

REQUIRED = object()
Entry = namedtuple("Entry", "key value line")


class ConfigError(Exception):
    """A config file is wrong; str() is ``file:line: message`` (or
    ``file: message`` when no line is to blame)."""

    def __init__(self, filename, line, message):
        self.filename, self.line, self.message = filename, line, message
        where = filename if line is None else "%s:%d" % (filename, line)
        super().__init__("%s: %s" % (where, message))


# ---- the xl.cfg grammar ----

_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n"}
_ID_START = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_"
_ID_CHARS = _ID_START + "0123456789."
_WORD_CHARS = _ID_CHARS + "-+"      # so that -1 or 1.5 read as bad numbers
_HEX = "0123456789abcdef"


def _tokens(text, filename):
    """Yield (kind, value, line); kind is 'id', 'num', 'str', 'nl', 'eof'
    or the punctuation character itself."""
    i, line, n = 0, 1, len(text)
    while i < n:
        c = text[i]
        if c == "\n":
            yield "nl", None, line
            line += 1
            i += 1
        elif c in " \t\r":
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "=[],;":
            yield c, c, line
            i += 1
        elif c in "\"'":
            start, i, out = line, i + 1, []
            while True:
                if i >= n or text[i] == "\n":
                    raise ConfigError(filename, start, "unterminated string")
                if text[i] == c:
                    break
                if text[i] == "\\":
                    esc = text[i + 1:i + 2]
                    if esc not in _ESCAPES:
                        raise ConfigError(filename, line,
                                          "unknown escape \\%s in string" % esc)
                    out.append(_ESCAPES[esc])
                    i += 2
                else:
                    out.append(text[i])
                    i += 1
            yield "str", "".join(out), start
            i += 1
        elif c in _WORD_CHARS:
            j = i
            while j < n and text[j] in _WORD_CHARS:
                j += 1
            word, i = text[i:j], j
            if c in _ID_START:
                yield "id", word, line
            else:
                yield "num", _number(word, filename, line), line
        else:
            raise ConfigError(filename, line, "unexpected character %r" % c)
    yield "eof", None, line


def _number(word, filename, line):
    low = word.lower()
    if low[:2] == "0x" and low[2:] and all(c in _HEX for c in low[2:]):
        return int(low, 16)
    if word.isdigit():
        return int(word)
    raise ConfigError(filename, line, "bad number %r" % word)


def _describe(kind, value):
    return {"nl": "end of line", "eof": "end of file"}.get(
        kind, repr(value))


def parse(text, filename="<string>"):
    """The settings of an xl.cfg-syntax text, as a list of Entry."""
    toks = _tokens(text, filename)
    entries, seen = [], {}
    tok = next(toks)
    while tok[0] != "eof":
        kind, key, line = tok
        if kind in ("nl", ";"):
            tok = next(toks)
            continue
        if kind != "id":
            raise ConfigError(filename, line, "expected a setting name, got %s"
                              % _describe(kind, key))
        kind, _, line = tok = next(toks)
        if kind != "=":
            raise ConfigError(filename, line, "expected '=' after %r" % key)
        value, tok = _value(toks, next(toks), filename)
        if tok[0] not in ("nl", ";", "eof"):
            raise ConfigError(filename, tok[2], "expected end of line after "
                              "the value of %r, got %s"
                              % (key, _describe(tok[0], tok[1])))
        if key in seen:
            raise ConfigError(filename, line, "duplicate key %r (first set on "
                              "line %d)" % (key, seen[key]))
        seen[key] = line
        entries.append(Entry(key, value, line))
    return entries


def _value(toks, tok, filename):
    """Parse one value starting at tok; return (value, next token)."""
    kind, value, line = tok
    if kind in ("str", "num"):
        return value, next(toks)
    if kind != "[":
        raise ConfigError(filename, line, "expected a value (string, number "
                          "or list), got %s" % _describe(kind, value))
    items, tok = [], next(toks)
    while True:
        while tok[0] == "nl":
            tok = next(toks)
        if tok[0] == "]":
            return items, next(toks)
        if tok[0] == "[":
            raise ConfigError(filename, tok[2], "lists cannot be nested")
        item, tok = _value(toks, tok, filename)
        items.append(item)
        while tok[0] == "nl":
            tok = next(toks)
        if tok[0] == ",":
            tok = next(toks)
        elif tok[0] != "]":
            raise ConfigError(filename, tok[2], "expected ',' or ']' in list, "
                              "got %s" % _describe(tok[0], tok[1]))


def format_value(value):
    """A value in xl.cfg syntax (what parse reads back)."""
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[ %s ]" % ", ".join(format_value(v) for v in value)
    return '"%s"' % value.replace("\\", "\\\\").replace('"', '\\"') \
        .replace("\n", "\\n")


# ---- the tables of known keys ----

class Key:
    """One known setting: its type, default, constraints and doc line."""

    def __init__(self, name, default, doc, kind=None, choices=None,
                 minimum=None, maximum=None, path=False, check=None):
        self.name, self.default, self.doc = name, default, doc
        self.kind = kind or type(default)
        self.choices, self.minimum, self.maximum = choices, minimum, maximum
        self.path, self.check = path, check

    def convert(self, value):
        """The value if it fits this key, else raise ValueError(reason)."""
        if type(value) is not self.kind:
            raise ValueError("expected %s, got %s" % (
                _KIND_NAMES[self.kind], format_value(value)))
        if self.choices and value not in self.choices:
            raise ValueError("expected one of %s, got %s" % (
                ", ".join(self.choices), format_value(value)))
        if self.minimum is not None and value < self.minimum:
            raise ValueError("must be at least %d" % self.minimum)
        if self.maximum is not None and value > self.maximum:
            raise ValueError("must be at most %d" % self.maximum)
        if self.path and value and not os.path.isabs(value):
            raise ValueError("must be an absolute path")
        if self.check:
            self.check(value)
        return value


_KIND_NAMES = {str: "a string", int: "a number", list: "a list"}


class Table:
    """The known keys of one kind of file."""

    def __init__(self, title, keys):
        self.title = title
        self.keys = {k.name: k for k in keys}

    def apply(self, entries, filename):
        """Validated settings: every known key, defaults filled in."""
        out = {}
        for e in entries:
            key = self.keys.get(e.key)
            if key is None:
                near = difflib.get_close_matches(e.key, self.keys, 1)
                hint = " (did you mean %r?)" % near[0] if near else ""
                raise ConfigError(filename, e.line, "unknown key %r in a %s%s"
                                  % (e.key, self.title, hint))
            try:
                out[e.key] = key.convert(e.value)
            except ValueError as err:
                raise ConfigError(filename, e.line, "%s: %s" % (e.key, err))
        for key in self.keys.values():
            if key.name not in out:
                if key.default is REQUIRED:
                    raise ConfigError(filename, None,
                                      "%r is required" % key.name)
                out[key.name] = key.default
        return out

    def default_text(self):
        """The shipped file: every setting commented out at its default."""
        lines = ["# %s (xl.cfg syntax)." % self.title,
                 "# Every setting shows its default; uncomment to change it.",
                 ""]
        for key in self.keys.values():
            lines += ["# " + key.doc,
                      "#%s=%s" % (key.name, format_value(key.default)), ""]
        return "\n".join(lines)


def _window(value):
    if value and (value not in (16, 32, 64, 128, 256, 512)):
        raise ValueError("must be 0 or a power of two from 16 to 512")


def _host_port(value):
    if value:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError('expected "" or "host:port", got %s'
                             % format_value(value))


def _group(value):
    if value:
        try:
            grp.getgrnam(value)
        except KeyError:
            raise ValueError("no group %s on this host" % format_value(value))


def _names(value):
    for v in value:
        if v != "*":
            check_name(v, "domain name")


DAEMON = Table("xenclone daemon configuration", [
    Key("backend", "auto", "hypervisor to drive: auto (xen if this is a Xen "
        "dom0, else kvm), kvm or xen", choices=("auto", "kvm", "xen")),
    Key("state_dir", "/var/lib/xenclone", "state that survives restarts: "
        "images, page-out stores", path=True),
    Key("run_dir", "/run/xenclone", "sockets, helper logs and other "
        "runtime files", path=True),
    Key("control_socket", "/run/xenclone/control.sock", "the local control "
        "API socket that the xenclone command talks to", path=True),
    Key("control_group", "", 'group allowed to use the control socket '
        '("" = root only)', check=_group),
    Key("host_memory_mib", 0, "host memory for clone pages, in MiB (0 = "
        "from MemAvailable at start)", minimum=0),
    Key("low_watermark_mib", 256, "when the kernel's MemAvailable falls below "
        "this, the host budget shrinks until high_watermark_mib is met again",
        minimum=0),
    Key("high_watermark_mib", 512, "above this much MemAvailable the budget "
        "grows back, up to host_memory_mib", minimum=0),
    Key("psi_some_max", 0, "also shrink the budget while PSI memory 'some "
        "avg10' exceeds this percent (0 = PSI not used)", minimum=0, maximum=100),
    Key("memory_limit_mib", 0, "host policy: pages a clone may hold, in MiB "
        "(0 = no policy)", minimum=0),
    Key("burst_size_mib", 0, "how far over memory_limit_mib a clone may go "
        "for a burst", minimum=0),
    Key("burst_time_ms", 1000, "how long a burst may last; then the clone is "
        "evicted to its limit and held there as long again", minimum=1),
    Key("balloon_floor_percent", 75, "Xen without MEM_PAGING: below "
        "low_watermark_mib of the hypervisor's free memory, Linux clones are "
        "asked (memory/target) to give frames back, down to this percent of "
        "their memory", minimum=1, maximum=100),
    Key("eviction_policy", "sharing", "how victims are chosen: clock (oldest "
        "first, recent faults spared) or sharing (clean pages first, private "
        "pages last)", choices=("clock", "sharing")),
    Key("pageout_sync", 0, "1 = fsync the page-out store before a dirty "
        "page is dropped", minimum=0, maximum=1),
    Key("share_onfetch", 1, "1 = clones map the image's pages shared, copied "
        "on write; 0 = every clone gets private copies (no sharing)",
        minimum=0, maximum=1),
    Key("hoard_rate", 5000, "default background fill rate, pages a second",
        minimum=1),
    Key("fault_around", 512, "KVM: most pages mapped around a fault from the "
        "image cache; the window grows fourfold from 16 with each fault in a 2 MiB "
        "chunk (0 = off, else a power of two from 16 to 512)", check=_window),
    Key("credit_batch", 256, "pages granted to the C fault path at a time; "
        "also how far the budget may be overshot", minimum=1),
    Key("memserver_dir", "", 'where the memory server keeps images ("" = '
        '<state_dir>/images)', path=True),
    Key("memserver_domain_mib", 0, "Xen: keep images in a memory-server domain of "
        "this many MiB instead of dom0 (0 = in dom0).  It needs max_grant_frames of "
        "about MiB/2; Xen caps that at its gnttab_max_frames boot option (64 by "
        "default, so about 130 MiB)", minimum=0),
    Key("grant_cache_mib", 64, "Xen: images in the memory-server domain are read "
        "through grant maps kept in dom0 up to this much (address space and Xen "
        "maptrack entries, not dom0 memory)", minimum=2),
    Key("memserver_tcp", "", 'serve images to other hosts over TLS at '
        '"host:port" ("" = local only)', check=_host_port),
    Key("memserver_token_file", "", 'access token for remote pagers ("" = '
        '<state_dir>/memserver.token)', path=True),
    Key("memserver_max_links", 128, "most TLS links to the memory server open at once; "
        "more are closed before their handshake", minimum=1),
    Key("memserver_max_unauth_links", 64, "most TLS links open that have not yet said "
        "hello with the token (each may send one frame of 4 KiB)", minimum=1),
    Key("memserver_hello_timeout_s", 10, "a TLS link that has not said hello with the "
        "token in this many seconds is closed", minimum=1),
    Key("memserver_stall_timeout_s", 60, "a TLS peer that leaves its replies unread this "
        "long (it is no longer read meanwhile) is closed", minimum=1),
    Key("memserver_remote", "", 'launch images this host lacks from the memory '
        'server at "host:port" (its memserver_tcp) over TLS ("" = none)', check=_host_port),
    Key("memserver_remote_ca", "", "the remote server's CA certificate (its "
        "state_dir/tls/ca.pem)", path=True),
    Key("memserver_remote_token_file", "", "the remote server's access token "
        "(its memserver_token_file)", path=True),
    Key("memserver_request_timeout_s", 10, "a memory server that does not "
        "answer a request in this many seconds is taken for gone: the link "
        "is dropped and faults wait while the pager reconnects", minimum=1),
    Key("memserver_timeout_s", 60, "a clone whose fault has waited this long "
        "on the memory server is paused (paused-by-timeout) until it answers; "
        "0 = wait for ever", minimum=0),
    Key("metrics_listen", "", 'serve Prometheus /metrics on a twisted '
        'endpoint, e.g. "tcp:9577:interface=127.0.0.1" ("" = off)'),
    Key("fill", "auto", "how Xen clones get their memory: fork (VM forks of the "
        "image's image domain, needs a Xen with MEM_SHARING: xen/patches), lazy (on "
        "fault, needs a Xen with MEM_PAGING), before-run (copied in first) or auto "
        "(fork, else lazy, where the hypervisor has them); a launch may ask for one",
        choices=("auto", "fork", "lazy", "before-run")),
    Key("xen_guest_kernel", "", 'PVH kernel of masters the xen backend creates '
        '("" = the project\'s guest/build/guest.elf)', path=True),
    Key("vmm_hosts", 1, "VMM host processes that run KVM clones", minimum=1),
    Key("guest_kernel", "", 'the micro-VM guest kernel ("" = '
        '<venv>/share/xenclone/guest.bin if installed, else guest/build/guest.bin '
        'of the source tree)', path=True),
    Key("xenstore", "auto", "XenStore to publish in and take requests from: "
        "auto (xenstored on a Xen dom0, else embedded), embedded (the daemon's "
        "own server, a helper process), xenstored (the real one) or off",
        choices=("auto", "embedded", "xenstored", "off")),
    Key("xenstore_socket", "", 'its socket ("" = <run_dir>/xenstore.sock when '
        'embedded, else /run/xenstored/socket)', path=True),
    Key("xenstore_publish_ms", 500, "least time between two updates of the "
        "state published under /tool/xenclone, in ms", minimum=10),
    Key("guest_requests", [], 'domains (by name) that may ask to be cloned '
        'through their own XenStore node; ["*"] = every master', check=_names),
    Key("guest_max_clones", 8, "most live clones one guest may have asked for",
        minimum=0, maximum=256),
    Key("guest_request_interval_ms", 1000, "least time between two requests "
        "of one guest, in ms (earlier ones are refused)", minimum=0),
    Key("log_level", "info", "least severe log level written: debug, info, "
        "warn, error or critical",
        choices=("debug", "info", "warn", "error", "critical")),
])

def _pvh_only(value):
    if value != "pvh":
        raise ValueError('only PVH guests (type = "pvh"): PV and HVM guests are not supported')


def _devices(kind):
    """A check of ``vif`` or ``disk``: xl's syntax, refusals by name."""
    def check(value):
        try:
            devices.from_xl_cfg(*((value, []) if kind == "vif" else ([], value)))
        except WireError as e:
            raise ValueError(str(e))
    return check


DOMAIN = Table("xenclone domain configuration", [
    Key("name", REQUIRED, "domain name", kind=str),
    Key("type", "pvh", "guest type: pvh only", check=_pvh_only),
    Key("memory", 128, "guest memory in MiB", minimum=4, maximum=64 * 1024),
    Key("vcpus", 1, "virtual CPUs (the project's guest: 1)", minimum=1, maximum=128),
    Key("kernel", "", "a Linux PVH kernel (xen backend): the master is that guest, "
        "not the project's", path=True),
    Key("ramdisk", "", "its initramfs", path=True),
    Key("extra", "", "its kernel command line"),
    Key("disk", [], "a Linux master's disks, as xl.cfg(5): raw or qcow2 files; each clone "
        "gets a copy-on-write overlay of their snapshot at bless", check=_devices("disk")),
    Key("vif", [], "a Linux master's vifs, as xl.cfg(5); each clone gets its own on the "
        "same bridge, with a MAC of its own", check=_devices("vif")),
    Key("workload", "scan", "guest workload: scan (touch and checksum pages)",
        choices=("scan",)),
    Key("read_percent", 10, "percent of pages the workload reads per pass",
        minimum=0, maximum=100),
    Key("write_pages", 8, "pages the workload writes per pass", minimum=0),
    Key("zero_every", 16, "every Nth page of the data set is zero (0 = none)",
        minimum=0),
    Key("seed", 1, "seed of the workload's data set and access pattern",
        minimum=0),
    Key("hostile", 0, "tests: rounds of hostile memory access before the "
        "workload (reads out of order, writes across page boundaries, undone)",
        minimum=0),
])


# ---- loading ----

def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as e:
        raise ConfigError(path, 1, "not UTF-8 text (%s)" % e.reason)


def loads_daemon_config(text, filename="<string>"):
    s = DAEMON.apply(parse(text, filename), filename)
    if s["low_watermark_mib"] > s["high_watermark_mib"]:
        raise ConfigError(filename, None, "low_watermark_mib (%d) must not exceed "
                          "high_watermark_mib (%d)" % (s["low_watermark_mib"],
                                                        s["high_watermark_mib"]))
    if s["memserver_remote"] and not (s["memserver_remote_ca"]
                                      and s["memserver_remote_token_file"]):
        raise ConfigError(filename, None, "memserver_remote needs memserver_remote_ca "
                          "and memserver_remote_token_file")
    # Defaults that live under state_dir follow it.
    if not s["memserver_dir"]:
        s["memserver_dir"] = os.path.join(s["state_dir"], "images")
    if not s["memserver_token_file"]:
        s["memserver_token_file"] = os.path.join(s["state_dir"],
                                                 "memserver.token")
    return s


def load_daemon_config(path=None):
    """The daemon settings from ``path``, or the defaults when None."""
    if path is None:
        return loads_daemon_config("", "<defaults>")
    return loads_daemon_config(_read(path), path)


def loads_domain_config(text, filename="<string>"):
    """xenclone's keys, defaults filled in, and the xl.cfg(5) keys the
    file sets, checked as xl would (``xl_keys``)."""
    entries = parse(text, filename)
    try:
        own, xl = xl_keys.split_entries(entries, DOMAIN.keys)
        cfg = DOMAIN.apply(own, filename)
        cfg.update((e.key, e.value) for e in xl)
        xl_keys.check_sizes(cfg, {e.key for e in entries})
    except xl_keys.XlKeyError as e:
        line = e.line or next((x.line for x in entries if x.key == e.key), None)
        raise ConfigError(filename, line, str(e))
    return cfg


def load_domain_config(path):
    """A domain config (``xenclone create CONFIG``) as a plain dict."""
    return loads_domain_config(_read(path), path)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv != ["--print-default"]:
        print("usage: python -m xenclone.config --print-default",
              file=sys.stderr)
        return 2
    sys.stdout.write(DAEMON.default_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
