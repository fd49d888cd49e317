"""Text output for people: no Python reprs, aligned columns, sizes in units.

Page counts (``*_pages``) and MiB figures (``*_mib``) are shown as sizes
(``512M``); a missing figure is ``-``; nested objects are indented below
their key.  ``--json`` bypasses all of this and keeps the daemon's fields.
"""

from xenclone.cli.units import show_bytes, show_pages


def value(key, v, pages=False):
    """One figure as text; ``pages``: the figures below a ``*_pages`` key."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int) and (pages or key.endswith("_pages")):
        return show_pages(v)
    if isinstance(v, int) and key.endswith("_mib"):
        return show_bytes(v * 2**20)
    if isinstance(v, float):
        return "%.3g" % v
    if isinstance(v, (list, dict)):
        return _inline(key, v, pages)
    return str(v)


def _inline(key, obj, pages):
    pages = pages or key.endswith("_pages")
    if isinstance(obj, dict):
        return " ".join("%s=%s" % (k, value(str(k), v, pages))
                        for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))) or "-"
    return ", ".join(value(key, v, pages) for v in obj) or "-"


def describe(result, indent=0, pages=False):
    """``key  value`` lines, keys aligned; a dict's own keys below it
    when it holds dicts or is long."""
    if not result:
        return " " * indent + "-"
    width = max(len(str(k)) for k in result)
    lines = []
    for key in sorted(result, key=str):
        v, below = result[key], pages or str(key).endswith("_pages")
        if isinstance(v, dict) and v and (len(v) > 4 or any(isinstance(x, dict)
                                                             for x in v.values())):
            lines.append(" " * indent + str(key))
            lines.append(describe(v, indent + 2, below))
        else:
            lines.append(" " * indent + "%-*s  %s" % (width, key, value(str(key), v, pages)))
    return "\n".join(lines)


def describe_host(result):
    """``xenclone host``: the kernel's per-clone figures are pages too."""
    kernel = result.get("kernel")
    if isinstance(kernel, dict) and "clones" in kernel:
        kernel = dict(kernel)
        kernel["clone_pages"] = kernel.pop("clones")
        result = dict(result, kernel=kernel)
    return describe(result)


def table(rows, columns):
    """``columns``: (title, key) pairs.  Numbers and sizes right-aligned."""
    cells = [[value(key, row.get(key)) for _, key in columns] for row in rows]
    right = [all(_numeric(row.get(key)) for row in rows) and bool(rows) for _, key in columns]
    widths = [max([len(title)] + [len(r[i]) for r in cells])
              for i, (title, _) in enumerate(columns)]

    def line(row):
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(row, widths, right)).rstrip()

    return "\n".join([line([t for t, _ in columns])] + [line(r) for r in cells])


def _numeric(v):
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))
