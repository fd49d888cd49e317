"""The xenclone package's imports, read with ``ast`` (nothing is imported):
no import circle anywhere, and nothing in a lower floor imports a higher one.

Floors, lowest first: the core (xenclone/*.py, policy/, and any package not
named below); memserver/; backends/, control/, xenstore/; and on top what
puts a process together or drives a daemon: service.py, tap.py,
memserver_process.py, cli/, selftests/, completion.py and manpages.py (made
from cli/'s parser).  A module imports its own floor and those below, never
one above.  Imports inside functions count.
"""

import ast
import os

from twisted.trial import unittest

import xenclone

PACKAGE = os.path.dirname(os.path.abspath(xenclone.__file__))
FLOORS = {"memserver": 1, "backends": 2, "control": 2, "xenstore": 2,
          "service": 3, "tap": 3, "memserver_process": 3, "cli": 3, "selftests": 3,
          "completion": 3, "manpages": 3}


def modules():
    """{dotted name: path} of every module and package in xenclone."""
    found = {}
    for d, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3]
                name = rel.replace(os.sep, ".").removesuffix(".__init__")
                found[name] = path
    return found


def imported(name, path, known):
    """The xenclone modules ``name`` imports, with the packages each runs."""
    tree = ast.parse(open(path).read(), path)
    here = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = here.split(".")[:len(here.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                sub = base + "." + a.name
                targets.add(sub if sub in known else base)
    found = set()
    for t in targets:
        parts = t.split(".")
        found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    return {t for t in found if t in known and t != name and not name.startswith(t + ".")}


def graph():
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def floor(name):
    """xenclone.<first>...: the floor of <first>, a package or top module."""
    parts = name.split(".")
    return FLOORS.get(parts[1], 0) if len(parts) > 1 else 0


def circle(edges):
    """One import circle as a list of modules, or None (depth-first search)."""
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == "open":
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = visit(n)
                if found:
                    return found
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(edges):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


class ImportShapeTests(unittest.TestCase):

    def test_no_import_circle(self):
        found = circle(graph())
        self.assertIsNone(found, "import circle: %s" % " -> ".join(found or []))

    def test_no_floor_imports_a_higher_one(self):
        upward = sorted("%s -> %s" % (m, n) for m, ns in graph().items() for n in ns
                        if floor(n) > floor(m))
        self.assertEqual(upward, [])

    def test_the_checks_see_a_circle_and_an_upward_arrow(self):
        self.assertEqual(circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}), ["a", "b", "c", "a"])
        self.assertIsNone(circle({"a": {"b"}, "b": set()}))
        self.assertGreater(floor("xenclone.cli.main"), floor("xenclone.backends.xen.xl"))
        self.assertGreater(floor("xenclone.memserver.store"), floor("xenclone.image"))

    def test_imports_inside_functions_count(self):
        edges = graph()
        self.assertIn("xenclone.selftests.scenarios", edges["xenclone.cli.main"])
        self.assertIn("xenclone.wire", edges["xenclone.control_client"])
