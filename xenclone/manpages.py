"""xenclone(1) and xenclone.conf(5), written from the command's parser and
the config table, so that they cannot drift from either.

    python -m xenclone.manpages /usr/local/share/man
        -> man1/xenclone.1, man5/xenclone.conf.5
"""

import argparse
import os
import sys

from xenclone import config
from xenclone.cli.parser import build_parser

DATE = "2026"
SOURCE = "xenclone 0.1.0"


def _esc(text):
    """Roff text: backslashes and option dashes escaped, no line taken for a request."""
    text = str(text).replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line
                     for line in text.splitlines())


def _usage(parser):
    return " ".join(parser.format_usage().split())[len("usage: "):]


def _arguments(parser):
    """.TP paragraphs: each option and positional argument with its help."""
    out = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            names = ", ".join("\\fB%s\\fR" % _esc(o) for o in action.option_strings)
            if action.nargs != 0:
                names += " \\fI%s\\fR" % _esc(action.metavar or action.dest.upper())
        else:
            names = "\\fI%s\\fR" % _esc(action.metavar or action.dest)
        text = action.help or ""
        if action.choices and not action.option_strings:
            text = (text + " " if text else "") + "one of: %s" % ", ".join(action.choices)
        elif action.choices:
            text = (text + " " if text else "") + "(%s)" % ", ".join(action.choices)
        out += [".TP", names, _esc(text or "")]
    return out


def commands(sub):
    """(name, help, parser) of every command, in the parser's order."""
    helps = {a.dest: a.help for a in sub._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in sub.choices.items()]


def xenclone_1():
    parser, sub = build_parser()
    lines = [
        '.TH XENCLONE 1 "%s" "%s" "Xen toolstack"' % (DATE, SOURCE),
        ".SH NAME", "xenclone \\- clone running virtual machines",
        ".SH SYNOPSIS", "\\fBxenclone\\fR [\\fB\\-c\\fR \\fIFILE\\fR] [\\fB\\-\\-via\\-xenstore\\fR]"
        " \\fIcommand\\fR [\\fIoptions\\fR]",
        ".SH DESCRIPTION",
        "xenclone talks to the xenclone daemon in the style of \\fBxl\\fR(1): \\fBbless\\fR a "
        "master domain into an immutable image, \\fBlaunch\\fR clones of it that fill their "
        "memory from it lazily, and watch and steer their memory.",
        "Sizes are MiB when plain (512), as for \\fBxl mem\\-set\\fR, or take a K, M, G or T "
        "suffix (64K, 2G); \\fB\\-\\-json\\fR output keeps the daemon's 4 KiB page counts.",
        ".SH OPTIONS"] + _arguments(parser) + [".SH COMMANDS"]
    for name, help_text, p in commands(sub):
        lines += [".SS %s" % _esc(name), "\\fB%s\\fR" % _esc(_usage(p)), ".PP", _esc(help_text)]
        lines += _arguments(p)
    lines += [
        ".SH EXIT STATUS",
        ".TP", "0", "done", ".TP", "1", "the operation failed",
        ".TP", "2", "bad usage or config", ".TP", "3", "the daemon cannot be reached",
        ".TP", "141", "the output pipe was closed early (as a C tool killed by SIGPIPE)",
        ".SH ENVIRONMENT", ".TP", "\\fBXENCLONE_CONFIG\\fR",
        "the config file to read when \\fB\\-c\\fR is not given",
        ".SH FILES", ".TP", "\\fI/etc/xen/xenclone.conf\\fR",
        "the daemon's config, read by the command too when it exists; see "
        "\\fBxenclone.conf\\fR(5)",
        ".TP", "\\fI/run/xenclone/control.sock\\fR", "the daemon's control socket (by default)",
        ".SH SEE ALSO", "\\fBxenclone.conf\\fR(5), \\fBxl\\fR(1), \\fBxentop\\fR(1), "
        "\\fBtwistd\\fR(1)"]
    return "\n".join(lines) + "\n"


def xenclone_conf_5():
    lines = [
        '.TH XENCLONE.CONF 5 "%s" "%s" "Xen toolstack"' % (DATE, SOURCE),
        ".SH NAME", "xenclone.conf \\- the xenclone daemon's configuration",
        ".SH SYNOPSIS", "\\fI/etc/xen/xenclone.conf\\fR",
        ".SH DESCRIPTION",
        "The file uses \\fBxl.cfg\\fR(5) syntax: \\fIKEY\\fR = \\fIVALUE\\fR, one a line; "
        "values are quoted strings, numbers or [ lists ]; # starts a comment.  A bad line "
        "stops the daemon with \\fIfile\\fR:\\fIline\\fR: \\fImessage\\fR.  The daemon and "
        "\\fBxenclone\\fR(1) read it when it exists, or the file named by \\-c or "
        "$XENCLONE_CONFIG.",
        ".SH SETTINGS"]
    for key in config.DAEMON.keys.values():
        lines += [".TP", "\\fB%s\\fR = %s" % (_esc(key.name), _esc(config.format_value(
            key.default))), _esc(key.doc)]
    lines += [".SH SEE ALSO", "\\fBxenclone\\fR(1), \\fBxl.cfg\\fR(5)"]
    return "\n".join(lines) + "\n"


PAGES = (("man1", "xenclone.1", xenclone_1), ("man5", "xenclone.conf.5", xenclone_conf_5))


def write(man_dir):
    """The pages under ``man_dir`` (e.g. /usr/local/share/man); their paths."""
    paths = []
    for section, name, render in PAGES:
        os.makedirs(os.path.join(man_dir, section), exist_ok=True)
        path = os.path.join(man_dir, section, name)
        with open(path, "w") as f:
            f.write(render())
        paths.append(path)
    return paths


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m xenclone.manpages MAN_DIR   (e.g. /usr/local/share/man)",
              file=sys.stderr)
        return 2
    for path in write(argv[0]):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
