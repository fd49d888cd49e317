"""The Markdown table of a bench/compare.py result."""

FIGURES = ("time_to_answers_s", "launch_to_first_instruction_ms", "pss_mib", "rss_mib",
           "faults", "common_part_faults", "pages_moved", "prefetched_pages", "around_pages")

_COLUMNS = [("time to answers s", "time_to_answers_s", "%.3f"),
            ("(a) machinery s", "machinery_s", "%.3f"),
            ("first instr. ms", "launch_to_first_instruction_ms", "%.2f"),
            ("PSS MiB", "pss_mib", "%.0f"),
            ("RSS MiB", "rss_mib", "%.0f"),
            ("faults", "faults", "%.0f"),
            ("common-part faults", "common_part_faults", "%.0f"),
            ("prefetched", "prefetched_pages", "%.0f"),
            ("mapped around faults", "around_pages", "%.0f"),
            ("pages moved", "pages_moved", "%.0f")]


def _cell(fig, key, fmt):
    s = fig.get(key)
    if not s:
        return "–"
    if s["min"] == s["max"]:
        return fmt % s["median"]
    return (fmt + " (" + fmt + "–" + fmt + ")") % (s["median"], s["min"], s["max"])


def _goal(v):
    return {True: "met", False: "MISSED", None: "n/a"}[v]


def markdown(out):
    lines = ["# xenclone vs QEMU and CRIU on this host", "",
             "Median (min–max) over the runs whose answers were all right; "
             "(a) = lazy run less the all-resident run of the same side.", ""]
    for note in out.get("notes", []):
        lines += ["Note: " + note, ""]
    head = ["workload", "side", "right/runs"] + [c[0] for c in _COLUMNS]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for workload, sides in out["figures"].items():
        for side, fig in sides.items():
            lines.append("| " + " | ".join(
                [workload, side, "%d/%d" % (fig["right"], fig["runs"])]
                + [_cell(fig, key, fmt) for _, key, fmt in _COLUMNS]) + " |")
    s = out["summary"]
    lines += ["", "## Goals (%s)" % s.get("goal_workload"), ""]
    lines += ["- %s: **%s**" % (k, _goal(v)) for k, v in s["goals_met"].items()]
    lines += ["", "Ratios:", ""]
    lines += ["- %s: %s" % (k, _fmt(v)) for k, v in s.items()
              if k not in ("goals_met", "goal_workload")]
    storm = out["limits"]["fault_storm"]
    lines += ["", "## Limits (same run)", ""]
    for mib, lim in out["limits"]["memcpy_first_touch"].items():
        lines.append("- %s MiB: memcpy %.3f s, first touch %.3f s" % (
            mib, lim["memcpy_s"], lim["first_touch_s"]))
    for r in storm:
        lines.append("- fault storm (%d pages, %d threads): raw C uffd loop %.0f faults/s, "
                     "pager %.0f faults/s, ratio %.2f" % (
                         r["pages"], r["threads"], r["raw_faults_per_s"],
                         r["pager_faults_per_s"], r["pager_vs_raw"]))
    lines += ["", "## Peers", ""]
    for name, what in out["peers"].items():
        if isinstance(what, dict):
            what = "; ".join("%s: %s" % kv for kv in what.items())
        lines.append("- %s: %s" % (name, what))
    return "\n".join(lines) + "\n"


def _fmt(v):
    if isinstance(v, dict):
        return ", ".join("%s %s" % (k, _fmt(x)) for k, x in v.items())
    if isinstance(v, float):
        return "%.3g" % v
    return str(v)
