#!/usr/bin/env python3
"""Checks the include graph of lib/ and include/dsm/ against the declared layers.

Every `#include "<folder>/..."` in lib/<layer>/ is an arrow layer -> folder. An arrow must
follow LAYERS (directly or through lower layers), the pure layers must not reach the kernel,
the network or the clock, each lib/<layer>/CMakeLists.txt must declare exactly the components
its folder includes (DEPS), public headers may include only dsm/, absl/ and the standard
library, and the "Layers" diagram in docs/ARCHITECTURE.md must be the one this script draws
from the includes. Prints each violation as file:line and exits 1 if there is any.

Usage: scripts/check_layering.py [--root DIR]        check (ctest `layering` runs this)
       scripts/check_layering.py --diagram           print the layer diagram of the includes
"""

import argparse
import os
import re
import sys

# Each layer and the layers it may include directly; what those may include is allowed too.
# dsm/ (the public headers) and absl/ are open to every layer.
LAYERS = {
    "common": [],
    "protocol": ["common"],
    "coherence": ["protocol", "common"],
    "transport": ["protocol", "common"],
    "lock": ["protocol", "common"],
    "fault": ["common"],
    "region": ["coherence", "fault", "common"],
    "node": ["region", "lock", "transport", "fault", "common"],
    # Beside the engine, on the public API (dsm/) only: placing a node from a launcher's
    # environment, and allocation inside a region.
    "launch": ["common"],
    "heap": [],
}

# The pure layers: state machines driven by their callers' messages and `now` arguments, tested
# by simulation. They must not reach the kernel, the network, the mapped memory or the clock.
PURE = {"coherence", "lock"}
PURE_FORBIDDEN_LAYERS = {"fault", "transport", "region", "node"}
# What the pure layers may take from common/ (docs/ARCHITECTURE.md, "Layers", says why).
PURE_COMMON = {"common/log.h", "common/node_set.h", "common/page_ranges.h",
               "common/payload_pool.h", "common/status_macros.h", "common/timeouts.h"}
# Reading the clock: a pure layer gets `now` from its caller.
PURE_FORBIDDEN_CALLS = re.compile(
    r"\babsl::(Now|GetCurrentTimeNanos)\s*\(|\b(system|steady|high_resolution)_clock::now\b")

# Arrows against the table that are known and allowed, each with its reason. An entry that no
# longer matches an include is an error too, so the list cannot outlive its reason.
EXCEPTIONS = {}

INCLUDE = re.compile(r'^\s*#\s*include\s*([<"])([^>"]+)[>"]')
STD_HEADER = re.compile(r"^[a-z_0-9]+$")  # <cstdint>, <memory>: no directory, no .h
DIAGRAM_BEGIN = "<!-- layering diagram: scripts/check_layering.py --diagram -->"
DIAGRAM_END = "<!-- end of layering diagram -->"


def closure(layer):
    seen, todo = set(), list(LAYERS.get(layer, []))
    while todo:
        d = todo.pop()
        if d not in seen:
            seen.add(d)
            todo.extend(LAYERS.get(d, []))
    return seen


def sources(top):
    for base, dirs, files in os.walk(top):
        dirs.sort()
        for f in sorted(files):
            if f.endswith((".h", ".cc")):
                yield os.path.join(base, f)


def includes(path):
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            m = INCLUDE.match(line)
            if m:
                yield n, m.group(1), m.group(2)


def code_lines(path):
    """Lines with // comments stripped (enough for the call patterns checked here)."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            yield n, line.split("//", 1)[0]


def layer_folders(root):
    lib = os.path.join(root, "lib")
    return sorted(d for d in os.listdir(lib)
                  if os.path.isfile(os.path.join(lib, d, "CMakeLists.txt")))


def graph(root):
    """{layer: {included layer: [(file, line, header)]}} for every quoted include in lib/."""
    g = {}
    for layer in layer_folders(root):
        arrows = g.setdefault(layer, {})
        for path in sources(os.path.join(root, "lib", layer)):
            for n, kind, header in includes(path):
                if kind != '"' or "/" not in header:
                    continue
                target = header.split("/", 1)[0]
                if target in (layer, "absl", "dsm"):
                    continue
                arrows.setdefault(target, []).append((os.path.relpath(path, root), n, header))
    return g


def declared_deps(root, layer):
    """(CMakeLists path, line, {layers}) of the layers named in the DEPS of lib/<layer>'s
    dsm_component calls (dsm_<layer> and dsm_<layer>_<part>; parts of <layer> itself left
    out), or None for the set when there is no such call."""
    path = os.path.join(root, "lib", layer, "CMakeLists.txt")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    calls = list(re.finditer(r"dsm_component\(\s*dsm_%s(?:_[a-z0-9_]+)?\s(.*?)\)"
                             % re.escape(layer), text, re.S))
    if not calls:
        return os.path.relpath(path, root), 1, None
    line = text.count("\n", 0, calls[0].start()) + 1
    deps = set()
    for m in calls:
        dm = re.search(r"\bDEPS\b(.*?)(?:\bSOURCES\b|$)", m.group(1), re.S)
        for d in re.findall(r"\bdsm_([a-z0-9_]+)\b", dm.group(1)) if dm else []:
            base = d if d in LAYERS else next((x for x in LAYERS if d.startswith(x + "_")), d)
            if base != layer:
                deps.add(base)
    return os.path.relpath(path, root), line, deps


def check(root):
    errors = []
    g = graph(root)
    used_exceptions = set()
    for layer, arrows in sorted(g.items()):
        if layer not in LAYERS:
            errors.append("lib/%s: a layer missing from LAYERS in %s" % (layer, __file__))
            continue
        allowed = closure(layer)
        for target, sites in sorted(arrows.items()):
            for path, n, header in sites:
                if (layer, header) in EXCEPTIONS:
                    used_exceptions.add((layer, header))
                    continue
                if target not in LAYERS:
                    errors.append('%s:%d: "%s": %s is not a layer' % (path, n, header, target))
                elif target not in allowed:
                    errors.append('%s:%d: "%s": %s -> %s goes against the layers (%s may use: %s)'
                                  % (path, n, header, layer, target, layer,
                                     ", ".join(sorted(allowed)) or "nothing"))
                if layer in PURE and target in PURE_FORBIDDEN_LAYERS:
                    errors.append('%s:%d: "%s": the pure layer %s must not include %s/'
                                  % (path, n, header, layer, target))
                if layer in PURE and target == "common" and header not in PURE_COMMON:
                    errors.append('%s:%d: "%s": not among what the pure layers may use from '
                                  "common/ (PURE_COMMON)" % (path, n, header))
        if layer in PURE:
            for path in sources(os.path.join(root, "lib", layer)):
                for n, code in code_lines(path):
                    m = PURE_FORBIDDEN_CALLS.search(code)
                    if m:
                        errors.append("%s:%d: %s: the pure layer %s reads the clock; take `now` "
                                      "from the caller" % (os.path.relpath(path, root), n,
                                                           m.group(0), layer))
        # DEPS must be exactly the components the folder includes.
        cmake, line, deps = declared_deps(root, layer)
        if deps is None:
            errors.append("%s:%d: no dsm_component(dsm_%s ...)" % (cmake, line, layer))
            continue
        used = set(arrows)
        for d in sorted(used - deps):
            errors.append("%s:%d: dsm_%s includes %s/ (%s:%d) but does not declare dsm_%s in DEPS"
                          % (cmake, line, layer, d, arrows[d][0][0], arrows[d][0][1], d))
        for d in sorted(deps - used):
            errors.append("%s:%d: dsm_%s declares dsm_%s in DEPS but includes nothing from %s/"
                          % (cmake, line, layer, d, d))
    for key in sorted(set(EXCEPTIONS) - used_exceptions):
        errors.append("%s: EXCEPTIONS entry %s -> %s matches no include any more; remove it"
                      % (os.path.relpath(__file__, root), key[0], key[1]))
    for (a, b) in [(a, b) for a in PURE for b in closure(a) if b in PURE_FORBIDDEN_LAYERS]:
        errors.append("%s: LAYERS lets the pure layer %s reach %s" % (__file__, a, b))

    # Public headers: dsm/, absl/ and the standard library only.
    for path in sources(os.path.join(root, "include", "dsm")):
        for n, kind, header in includes(path):
            ok = (header.startswith(("dsm/", "absl/")) if kind == '"'
                  else STD_HEADER.match(header) is not None)
            if not ok:
                errors.append("%s:%d: public header includes %s%s%s (only dsm/, absl/ and the "
                              "standard library)" % (os.path.relpath(path, root), n, kind,
                                                     header, '"' if kind == '"' else ">"))

    errors.extend(check_diagram(root, g))
    return errors


def diagram(g):
    """Layers top-down by level (1 + the highest level they include), each with its arrows."""
    level = {}

    def lvl(layer, stack=()):
        if layer in stack:
            return 0  # a cycle: reported by check() as arrows against the layers
        if layer not in level:
            level[layer] = 1 + max((lvl(t, stack + (layer,)) for t in g.get(layer, {})
                                    if t in g), default=-1)
        return level[layer]

    for layer in g:
        lvl(layer)
    lines = ["```"]
    for layer in sorted(g, key=lambda x: (-level[x], x)):
        arrows = []
        for t in sorted(g[layer], key=lambda x: (-level.get(x, -1), x)):
            excepted = all((layer, h) in EXCEPTIONS for _, _, h in g[layer][t])
            arrows.append(t + ("*" if excepted else ""))
        lines.append("%d  %-10s -> %s" % (level[layer], layer, " ".join(arrows) or "(nothing)"))
    if any(k for k in EXCEPTIONS):
        lines.append("")
        lines.append("* only through: " + ", ".join(sorted({h for _, h in EXCEPTIONS})))
    lines.append("```")
    return "\n".join(lines)


def check_diagram(root, g):
    doc = os.path.join(root, "docs", "ARCHITECTURE.md")
    with open(doc, encoding="utf-8") as f:
        text = f.read()
    begin, end = text.find(DIAGRAM_BEGIN), text.find(DIAGRAM_END)
    if begin < 0 or end < begin:
        return ["docs/ARCHITECTURE.md: no layering diagram between %r and %r"
                % (DIAGRAM_BEGIN, DIAGRAM_END)]
    shown = text[begin + len(DIAGRAM_BEGIN):end].strip()
    if shown != diagram(g):
        line = text.count("\n", 0, begin) + 1
        return ["docs/ARCHITECTURE.md:%d: the layer diagram is not the include graph; replace "
                "it with the output of scripts/check_layering.py --diagram" % line]
    return []


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--root", default=os.path.join(os.path.dirname(__file__), ".."))
    p.add_argument("--diagram", action="store_true", help="print the diagram and exit")
    args = p.parse_args()
    root = os.path.abspath(args.root)
    if args.diagram:
        print(diagram(graph(root)))
        return 0
    errors = check(root)
    for e in errors:
        print(e)
    if errors:
        print("layering: %d violation(s)" % len(errors), file=sys.stderr)
        return 1
    print("layering: %d layers, every include follows the table" % len(graph(root)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
