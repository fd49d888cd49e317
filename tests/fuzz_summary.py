"""Print what ``make fuzz`` did: cases and time per target, and each
failure with hypothesis' shrunk example.

    python tests/fuzz_summary.py REPORT.jsonl
"""

import json
import sys


def main(path):
    with open(path) as f:
        runs = [json.loads(line) for line in f]
    print("%-16s %9s %9s %9s  %s" % ("target", "cases", "seconds", "cases/s", "result"))
    for r in runs:
        print("%-16s %9d %9.1f %9.0f  %s" % (r["target"], r["cases"], r["seconds"],
                                            r["cases"] / max(r["seconds"], 0.1),
                                            "FAILED" if r["failure"] else "ok"))
    cases, seconds = sum(r["cases"] for r in runs), sum(r["seconds"] for r in runs)
    failed = [r for r in runs if r["failure"]]
    print("%-16s %9d %9.1f %9s  %d failed" % ("total", cases, seconds, "", len(failed)))
    for r in runs:
        print("%s: %s" % (r["target"], r.get("pass", "")))
    for r in failed:
        print("\n== %s ==\n%s" % (r["target"], r["failure"]))
    return 1 if failed or not runs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
