#!/usr/bin/env python3
"""Fails when semflow's top-level modules import each other in a cycle.

Reads every `crate::<module>` path in src/ (use lines and inline paths alike), builds the graph
of top-level modules (src/<module>.rs or src/<module>/), and prints each cycle it finds, so
the layers in lib.rs's map stay a DAG from `main` down to `error`.

Run:  python3 scripts/check-layers.py        (exit 1 on a cycle)
"""
import pathlib
import re
import sys

SRC = pathlib.Path(__file__).resolve().parent.parent / "src"
PATH = re.compile(r"\bcrate::([A-Za-z_][A-Za-z0-9_]*)")
# `use crate::{a::x, b::y}` names several modules in one path.
GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def module_of(path: pathlib.Path) -> str | None:
    rel = path.relative_to(SRC)
    if rel.parts[0] in ("lib.rs", "main.rs"):
        return None
    return rel.parts[0].removesuffix(".rs")


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def root_reexports() -> dict[str, str]:
    """`pub use module::Name;` in lib.rs: `crate::Name` is an edge to `module`."""
    names = {}
    for m in re.finditer(r"^pub use (\w+)::(\{[^}]*\}|\w+);", (SRC / "lib.rs").read_text(), re.M):
        for name in m.group(2).strip("{}").split(","):
            names[name.strip()] = m.group(1)
    return names


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    reexports = root_reexports()
    for f in sorted(SRC.rglob("*.rs")):
        src = module_of(f)
        if src is None:
            continue
        text = strip_comments(f.read_text())
        # Tests beside the code may reach anywhere; only the library's own imports count.
        text = text.split("#[cfg(test)]", 1)[0]
        targets = set(PATH.findall(text))
        for group in GROUP.findall(text):
            targets |= {p.strip().split("::")[0] for p in group.split(",") if p.strip()}
        targets = {reexports.get(t, t) for t in targets}
        edges.setdefault(src, set()).update(t for t in targets if t and t != src)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, seen = [], set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(edges.get(node, ())):
            if nxt in stack:
                cycle = stack[stack.index(nxt):] + [nxt]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle)
            elif len(stack) < 32:
                visit(nxt, stack + [nxt])

    for start in sorted(edges):
        visit(start, [start])
    return found


def self_test() -> None:
    """The checker itself: a cycle is found, a DAG passes."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def main() -> int:
    self_test()
    edges = graph()
    found = cycles(edges)
    for c in found:
        print("import cycle between top-level modules: " + " -> ".join(c))
    if found:
        return 1
    print(f"layers: {len(edges)} top-level modules, no import cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
