"""Where benchmarks write their JSON, and the noise figures they report."""

import json
import os
import statistics
import time


def spread(values):
    values = [v for v in values if v is not None]
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def write(prefix, summary, runs, **extra):
    """bench/results/<prefix>-<timestamp>.json; prints the summary and
    returns the path."""
    out = dict({"summary": summary, "runs": runs, "when": time.strftime("%Y-%m-%dT%H:%M:%S")},
               **extra)
    folder = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "%s-%s.json" % (prefix, time.strftime("%Y%m%d-%H%M%S")))
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(summary, indent=2))
    print("written to", path)
    return path
