#!/usr/bin/env python3
"""Keeps semflow's layers: fails when a crate's top-level modules import each other in a
cycle, when a heavy dependency leaks into the inference crate, or when the tests' dependencies
would make `cargo test` rebuild what `cargo build` built.

1. Within each crate of the workspace (src/ and crates/*/src/): reads every
   `crate::<module>` path (use lines and inline paths alike), builds the graph of top-level
   modules (<module>.rs or <module>/), and prints each cycle it finds, so the layers in each
   lib.rs's map stay a DAG. Between crates the compiler keeps the layers: a crate cannot
   import from a crate above it.
2. `cargo tree` of the inference crate (default features, and with mistral.rs): none of the engine's,
   sources' or servers' crates (DataFusion, Arrow, Lance, rdkafka, axum, tonic, pgwire), so
   inference work builds and tests without them; and of the engine crate: none of the front
   ends' crates (axum, tonic, pgwire, Arrow Flight, the Prometheus exporter, the shell's line
   editor), so the engine builds and tests without them; nor the jobs crate's.
3. `cargo tree` of the workspace with and without dev-dependencies: no crate may get other
   features when the tests' dependencies join (cargo would build it, and everything above it,
   a second time: once the Lance stack did). The fix is to ask for the same features in
   [dependencies] (see `der` in Cargo.toml).

Run:  python3 scripts/check-layers.py        (exit 1 on a cycle or a leak)
"""
import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
CRATE_SRCS = [ROOT / "src"] + sorted(ROOT.glob("crates/*/src"))
INFERENCE_CRATE = "semflow-inference"
ENGINE_CRATE = "semflow-engine"
# Crates of the layers above inference; their names as `cargo tree` prints them.
HEAVY = re.compile(
    r"^(datafusion\S*|arrow\S*|lance\S*|rdkafka\S*|axum\S*|tonic\S*|pgwire|"
    r"datafusion-postgres|metrics-exporter-prometheus)$"
)
# Crates of the front ends above the engine.
SERVERS = re.compile(
    r"^(axum\S*|tonic\S*|pgwire|datafusion-postgres|arrow-flight|"
    r"metrics-exporter-prometheus|rustyline)$"
)
# Each lower crate, what must not be in its normal dependency tree, and the feature sets to
# check it with.
WITH_MISTRALRS = ([], ["--features", "mistralrs"])
LOWER = [
    (INFERENCE_CRATE, HEAVY, "engine, source or server", WITH_MISTRALRS),
    (ENGINE_CRATE, SERVERS, "front-end", WITH_MISTRALRS),
    ("semflow-jobs", SERVERS, "front-end", ([],)),
]
PATH = re.compile(r"\bcrate::([A-Za-z_][A-Za-z0-9_]*)")
# `use crate::{a::x, b::y}` names several modules in one path.
GROUP = re.compile(r"\bcrate::\{([^}]*)\}", re.S)


def module_of(src_dir: pathlib.Path, path: pathlib.Path) -> str | None:
    rel = path.relative_to(src_dir)
    if rel.parts[0] in ("lib.rs", "main.rs"):
        return None
    return rel.parts[0].removesuffix(".rs")


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def root_reexports(src_dir: pathlib.Path) -> dict[str, str]:
    """`pub use module::Name;` in lib.rs: `crate::Name` is an edge to `module`."""
    names = {}
    for m in re.finditer(r"^pub use (\w+)::(\{[^}]*\}|\w+);", (src_dir / "lib.rs").read_text(), re.M):
        for name in m.group(2).strip("{}").split(","):
            names[name.strip()] = m.group(1)
    return names


def graph(src_dir: pathlib.Path) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    reexports = root_reexports(src_dir)
    for f in sorted(src_dir.rglob("*.rs")):
        src = module_of(src_dir, f)
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


def leaks(crate: str, banned: re.Pattern, features: list[str]) -> list[str]:
    """`banned` crates in `crate`'s normal dependency tree."""
    tree = subprocess.run(
        ["cargo", "tree", "--locked", "-p", crate, "-e", "normal", "--prefix", "none"]
        + features,
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    names = {line.split()[0] for line in tree.splitlines() if line.strip()}
    return sorted(n for n in names if banned.match(n))


def features(edges: str) -> dict[str, set[str]]:
    """Each package of the workspace's tree over `edges`, with the features it is built with."""
    tree = subprocess.run(
        ["cargo", "tree", "--locked", "-e", edges, "--prefix", "none", "-f", "{p} {f}"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout
    out: dict[str, set[str]] = {}
    for line in tree.splitlines():
        parts = line.removesuffix(" (*)").split(" ")
        if len(parts) >= 2:
            out.setdefault(" ".join(parts[:2]), set()).add(" ".join(parts[2:]))
    return out


def rebuilt_for_tests() -> list[str]:
    """Packages built by `cargo build` with a feature set `cargo test` does not build them with.

    A feature set only the tests add (a package the tests' own dependencies need once more,
    e.g. for a build script) is a new unit beside the run build's, not a rebuild of it."""
    run, test = features("normal,build"), features("normal,build,dev")
    return sorted(
        f"{p}: {sorted(run[p])} -> {sorted(test[p])}"
        for p in run
        if p in test and not run[p] <= test[p]
    )


def main() -> int:
    self_test()
    assert HEAVY.match("datafusion-common") and not HEAVY.match("candle-core")
    assert SERVERS.match("axum-core") and not SERVERS.match("datafusion")
    failed = False
    for src_dir in CRATE_SRCS:
        name = src_dir.parent.relative_to(ROOT).as_posix() or "."
        edges = graph(src_dir)
        found = cycles(edges)
        for c in found:
            print(f"{name}: import cycle between top-level modules: " + " -> ".join(c))
        failed |= bool(found)
        if not found:
            print(f"layers: {name}: {len(edges)} top-level modules, no import cycle")
    for crate, banned, kind, feature_sets in LOWER:
        for features in feature_sets:
            leaked = leaks(crate, banned, features)
            label = " ".join(features) or "default features"
            if leaked:
                print(f"{crate} ({label}) depends on the layers above it: {', '.join(leaked)}")
                failed = True
            else:
                print(f"layers: {crate} ({label}) depends on no {kind} crate")
    rebuilt = rebuilt_for_tests()
    for line in rebuilt:
        print(f"the tests' dependencies change a feature set, so `cargo test` rebuilds {line}")
    failed |= bool(rebuilt)
    if not rebuilt:
        print("layers: `cargo test` builds every dependency with the features `cargo build` did")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
