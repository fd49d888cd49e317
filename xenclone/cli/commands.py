"""The single commands: each turns its arguments into a daemon request.

    cmd_<name>(args) -> (op, fields, formatter)

``op`` and ``fields`` go to the daemon as they are (control socket or
XenStore request); ``formatter`` turns the reply into text for people
(``--json`` prints the reply itself).  Sizes are converted here, at the
edge: the daemon counts pages.
"""

from xenclone.cli import text, units
from xenclone.config import ConfigError, load_domain_config
from xenclone.control_client import EXIT_USAGE, CliError


def cmd_create(args):
    try:
        cfg = load_domain_config(args.config_file)
    except (ConfigError, OSError) as e:
        raise CliError(str(e), EXIT_USAGE)
    return "create", {"config": cfg}, lambda r: "created %s (domid %d)" % (r["name"], r["domid"])


def cmd_bless(args):
    return ("bless", {"domain": args.domain, "name": args.name, "resume": args.resume},
            lambda r: "image %s generation %s: %d pages, %d stored" % (
                r["image_id"], r["generation"], r["npages"], r["nonzero_pages"]))


def cmd_launch(args):
    fields = {"image": args.image, "count": args.n, "paused": args.paused}
    if args.no_share:
        fields["share"] = False
    if args.no_prefetch:
        fields["prefetch"] = False
    if args.fill:
        fields["fill"] = args.fill
    if args.wait_identity is not None:
        fields["wait_identity"] = args.wait_identity
    return ("launch", fields, lambda r: "\n".join(
        "%d %s" % (c["domid"], c["name"]) + (" identity %s" % c["identity"] + (
            " in %.1f s" % c["identity_s"] if c.get("identity_s") is not None else "")
            if "identity" in c else "") for c in r["clones"]))


def cmd_list(args):
    return "list", {}, lambda r: text.table(r["domains"], [
        ("Name", "name"), ("ID", "domid"), ("Role", "role"), ("Image", "image"),
        ("State", "state"), ("Mem", "memory_mib")])


def cmd_images(args):
    return "images", {}, lambda r: text.table(
        [dict(i, size_pages=i.get("npages"), stored_pages=i.get("nonzero_pages"))
         for i in r["images"]],
        [("Image", "image_id"), ("Generation", "generation"), ("Size", "size_pages"),
         ("Stored", "stored_pages"), ("Clones", "clones")])


def cmd_info(args):
    return "info", {"domain": args.domain}, text.describe


def cmd_host(args):
    return "host", {}, text.describe_host


def cmd_audit(args):
    return ("audit", {"domain": args.domain}, lambda r: "%d of %d pages disagree%s" % (
        r["disagree"], r["pages"], "".join(
            "\n  page %(pfn)d: ledger %(ledger)s, fault path %(state)d, kernel %(kernel)d" % p
            for p in r["first"])))


def cmd_check(args):
    target = {"image": args.domain} if args.image else {"domain": args.domain}
    return ("memory_check", target, lambda r: "%d pages of %d finished clones checked: %d lost%s%s"
            % (r["checked_pages"], r["clones"], r["lost_pages"],
               "".join("\n  %s page %d" % tuple(p) for p in r["first_lost"]),
               "\n  not finished, not checked: " + ", ".join(r["unchecked"])
               if r["unchecked"] else ""))


def cmd_wait(args):
    return "wait", {"domain": args.domain, "timeout": args.timeout}, text.describe


def cmd_page(args):
    return ("page", {"image": args.image, "pfn": args.pfn, "count": args.n},
            lambda r: "%s page %d (+%d): sha256 %s%s" % (r["image"], r["pfn"], r["count"] - 1,
                                                        r["sha256"], " (zero)" if r["zero"] else ""))


def _knob(item):
    key, sep, value = item.partition("=")
    if not sep:
        raise CliError("set: %r is not key=value" % item, EXIT_USAGE)
    if key in ("target", "limit"):
        try:
            return key, units.parse_size(value)
        except ValueError as e:
            raise CliError("set: %s: %s" % (key, e), EXIT_USAGE)
    if key == "evict":
        return key, [v for v in value.split(",") if v]
    if key == "share.onfetch":
        if value not in _BOOLS:
            raise CliError("set: share.onfetch wants 1 or 0, got %r" % value, EXIT_USAGE)
        return key, _BOOLS[value]
    return key, value


_BOOLS = {"1": True, "on": True, "yes": True, "true": True,
          "0": False, "off": False, "no": False, "false": False}


def cmd_set(args):
    return ("set", {"domain": args.domain, "knobs": dict(_knob(k) for k in args.knobs)},
            text.describe)


def cmd_hoard(args):
    fields = {"domain": args.domain, "wait": args.wait}
    if args.rate is not None:
        fields["rate"] = args.rate
    return "hoard", fields, text.describe


def cmd_evict(args):
    return ("evict", {"domain": args.domain, "to": args.to}, text.describe)


def domain_cmd(op):
    return lambda args: (op, {"domain": args.domain}, lambda r: "%s %s" % (op, r["name"]))


def cmd_destroy(args):
    fields = {"domain": args.domain}
    if args.keep_disks:
        fields["keep_disks"] = True
    return ("destroy", fields, lambda r: "destroy %s" % r["name"] + "".join(
        "\n  kept %s" % path for path in r.get("kept_disks", ())))


def cmd_discard(args):
    return ("discard", {"image": args.image, "force": args.force},
            lambda r: "discarded %s" % r["image"])


def cmd_memserver(args):
    return ("memserver", {"action": args.action, "force": args.force}, text.describe)


def cmd_shutdown(args):
    return ("shutdown", {"force": args.force}, lambda r: "%sthe daemon and its helpers (%s) "
            "are stopping" % ("destroyed %d domains; " % len(r["destroyed"]) if r["destroyed"]
                              else "", ", ".join(r["helpers"])))
