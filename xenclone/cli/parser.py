"""The ``xenclone`` argument parser: one place that knows every command.

The command runs from it, and the man page and the bash completion are
generated from it (``xenclone.manpages``), so none of them can drift.
"""

import argparse

from xenclone.cli import top, units
from xenclone.cli.commands import (domain_cmd, cmd_audit, cmd_bless, cmd_check, cmd_create,
                                   cmd_destroy, cmd_discard, cmd_evict, cmd_hoard, cmd_host, cmd_images,
                                   cmd_info, cmd_launch, cmd_list, cmd_memserver, cmd_page,
                                   cmd_set, cmd_shutdown, cmd_wait)


def build_parser():
    """The parser and its subparsers action (``sub.choices``: name -> parser)."""
    p = argparse.ArgumentParser(prog="xenclone", description="Clone running virtual machines.")
    p.add_argument("--config", "-c", metavar="FILE",
                   help="daemon config (xl.cfg syntax); default: $XENCLONE_CONFIG, else "
                        "/etc/xen/xenclone.conf if it exists, else built-in defaults")
    p.add_argument("--via-xenstore", action="store_true",
                   help="ask through XenStore requests instead of the control socket")
    sub = p.add_subparsers(dest="command", metavar="<command>")

    def add(name, func, help, json_out=False):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        if json_out:
            sp.add_argument("--json", action="store_true", help="machine-readable output")
        return sp

    add("create", cmd_create, "start a master domain from a config file").add_argument(
        "config_file", metavar="CONFIG")
    sp = add("bless", cmd_bless, "turn a domain into an immutable image", True)
    sp.add_argument("domain", metavar="Domain")
    sp.add_argument("--name", help="image name (default: the domain's)")
    sp.add_argument("--resume", action="store_true", help="let the master run on")
    sp = add("launch", cmd_launch, "start clones of an image and print their ids", True)
    sp.add_argument("image", metavar="Image")
    sp.add_argument("-n", type=int, default=1, help="how many clones")
    sp.add_argument("--paused", action="store_true")
    sp.add_argument("--no-share", action="store_true",
                    help="share.onfetch=0: private copies of image pages, none shared")
    sp.add_argument("--no-prefetch", action="store_true",
                    help="do not map the image's recorded working set at launch")
    sp.add_argument("--fill", choices=("fork", "lazy", "before-run", "auto"),
                    help="how the clone gets its memory (default: the daemon's fill setting)")
    sp.add_argument("--wait-identity", type=int, nargs="?", const=60, metavar="SECONDS",
                    help="Linux clones: wait up to SECONDS (default 60) for their guest "
                         "agents to renew their identity, and say which did")
    add("list", cmd_list, "list domains with role, image and state", True)
    add("images", cmd_images, "list images", True)
    add("info", cmd_info, "show a domain's state and page figures", True).add_argument(
        "domain", metavar="Domain")
    add("host", cmd_host, "show the backend's capabilities and the host ledger", True)
    add("audit", cmd_audit, "compare a clone's pages: ledger, fault path and kernel",
        True).add_argument("domain", metavar="Domain")
    sp = add("check", cmd_check, "check every data page of finished clones against the "
             "workload's expectation", True)
    sp.add_argument("domain", metavar="Domain|Image")
    sp.add_argument("--image", action="store_true", help="check every clone of the image")
    sp = add("wait", cmd_wait, "wait until a domain stops running", True)
    sp.add_argument("domain", metavar="Domain")
    sp.add_argument("--timeout", type=int, default=60)
    for op, text in (("pause", "stop a domain's vCPUs"), ("unpause", "let a domain run"),
                     ("reset", "return a fork clone to its image's state (Xen VM fork)")):
        add(op, domain_cmd(op), text, True).add_argument("domain", metavar="Domain")
    sp = add("destroy", cmd_destroy, "destroy a domain and free its memory", True)
    sp.add_argument("domain", metavar="Domain")
    sp.add_argument("--keep-disks", action="store_true",
                    help="keep a clone's disk overlays (its image cannot be discarded "
                         "while they are kept)")
    sp = add("set", cmd_set, "set a clone's target, limit and eviction classes", True)
    sp.add_argument("domain", metavar="Domain")
    sp.add_argument("knobs", nargs="+", metavar="key=value",
                    help="target=SIZE limit=SIZE (512 or 512M: MiB, as xl mem-set; 64K, "
                         "2G) evict=drop-clean,drop-shared,page-out share.onfetch=1|0")
    sp = add("hoard", cmd_hoard, "fill a clone's remaining pages in the background", True)
    sp.add_argument("domain", metavar="Domain")
    sp.add_argument("--rate", type=int, help="pages a second (default: the config's hoard_rate)")
    sp.add_argument("--wait", action="store_true", help="return when the hoard is done")
    sp = add("evict", cmd_evict, "evict a clone's pages down to a resident size", True)
    sp.add_argument("domain", metavar="Domain")
    sp.add_argument("--to", type=units.size_arg, required=True, metavar="SIZE",
                    help="512 or 512M: MiB, as xl mem-set; 64K, 2G")
    sp = add("page", cmd_page, "digest of image pages, read from the memory server", True)
    sp.add_argument("image", metavar="Image")
    sp.add_argument("pfn", type=int)
    sp.add_argument("-n", type=int, default=1, help="how many pages (1-256)")
    sp = add("memserver", cmd_memserver, "the memory-server domain (Xen): status, start, "
             "or stop (refused while it holds images or feeds clones)", True)
    sp.add_argument("action", choices=("status", "start", "stop"))
    sp.add_argument("--force", action="store_true",
                    help="stop anyway: its images are lost, clones faulting from it paused")
    sp = add("discard", cmd_discard, "delete an image (refused while clones live)", True)
    sp.add_argument("image", metavar="Image")
    sp.add_argument("--force", action="store_true", help="destroy its clones first")
    sp = add("shutdown", cmd_shutdown, "stop the daemon and its helper processes (refused "
             "while domains live)")
    sp.add_argument("--force", action="store_true", help="destroy every domain first")
    top.add_parser(sub).set_defaults(func=None)
    sp = sub.add_parser("demo", help="bless a master, launch clones, check every answer")
    sp.add_argument("--clones", type=int, default=16)
    sp.add_argument("--memory-mib", type=int, default=256)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--plot", metavar="FILE.png", help="draw host memory over time")
    sp.set_defaults(func=None, scenario="demo")
    sp = sub.add_parser("selftest", help="run acceptance scenarios on this host")
    sp.add_argument("names", nargs="*", metavar="NAME")
    sp.add_argument("--list", action="store_true", help="list the scenarios")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=None, scenario="selftest")
    sp = sub.add_parser("xenstore-env", help="print XENSTORED_PATH=... for the daemon's XenStore")
    sp.set_defaults(func=None, scenario="xenstore-env")
    sp = sub.add_parser("help", help="show help for a command")
    sp.add_argument("topic", nargs="?")
    sp.set_defaults(func=None, scenario="help")
    return p, sub
