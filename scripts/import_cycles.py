#!/usr/bin/env python3
"""Fails on an import cycle between the files of one crate (scripts/lint.sh runs it).

A file imports another when it names an item through `crate::` or `super::` paths that resolve
to the other's module (the longest module prefix of the path that is a file). `mod` declarations
are not imports; a file's `#[cfg(test)] mod tests` is left out (tests may reach anywhere).
Each `src/` is one namespace (a library and its binary share no module names here); each
`src/bin/NAME/` is a crate of its own.

    python3 scripts/import_cycles.py [ROOT]
"""
import pathlib
import re
import sys

root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).parent.parent)
PATH = re.compile(r"\b(crate|super)::((?:[A-Za-z_][A-Za-z0-9_]*::)*(?:[A-Za-z_][A-Za-z0-9_]*|\{))")


def module_of(src, f):
    """Module path of file `f` in the crate whose root folder is `src`."""
    parts = list(f.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("lib", "main", "mod"):
        parts.pop()
    return tuple(parts)


def code(text):
    text = re.sub(r"//[^\n]*", "", text)  # comments, doc comments included
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests", text)
    return text[: cut.start()] if cut else text


def paths(text, start):
    """Each path named after `crate::` / `super::{`, braces expanded one level deep."""
    inner, depth, word = [], 0, ""
    for ch in text[start:]:
        if ch == "{":
            depth += 1
            if depth > 1:
                word += ch
        elif ch == "}":
            depth -= 1
            if depth == 0:
                inner.append(word)
                break
            word += ch
        elif ch == "," and depth == 1:
            inner.append(word)
            word = ""
        else:
            word += ch
    return [w.strip().split("::") for w in inner if w.strip()]


def crates():
    for toml in root.glob("*/Cargo.toml"):
        src = toml.parent / "src"
        if not src.is_dir():
            continue
        bins = [d for d in (src / "bin").glob("*") if d.is_dir()]
        yield src, [f for f in src.rglob("*.rs") if not any(b in f.parents for b in bins)]
        for b in bins:
            yield b, list(b.rglob("*.rs"))


def edges(src, files):
    modules = {module_of(src, f): f for f in files}
    graph = {f: set() for f in files}
    for f in files:
        here = module_of(src, f)
        parent = here if f.name in ("mod.rs", "lib.rs", "main.rs") else here[:-1]
        text = code(f.read_text(encoding="utf-8"))
        for m in PATH.finditer(text):
            base = () if m.group(1) == "crate" else parent[:-1] if f.name == "mod.rs" else parent
            named = m.group(2).split("::")
            prefix = named[:-1]
            targets = [prefix + p for p in paths(text, m.end() - 1)] if named[-1] == "{" else [named]
            for t in targets:
                full = base + tuple(t)
                for n in range(len(full), -1, -1):
                    g = modules.get(full[:n])
                    if g is not None:
                        if g != f:
                            graph[f].add(g)
                        break
    return graph


def cycle(graph):
    """One cycle of `graph`, as a list of files, or None."""
    state, stack = {}, []

    def visit(f):
        state[f] = 1
        stack.append(f)
        for g in sorted(graph[f]):
            if state.get(g) == 1:
                return stack[stack.index(g):] + [g]
            if g not in state and (found := visit(g)):
                return found
        state[f] = 2
        stack.pop()
        return None

    for f in sorted(graph):
        if f not in state and (found := visit(f)):
            return found
    return None


failed = False
for src, files in crates():
    if found := cycle(edges(src, files)):
        failed = True
        print("import cycle: " + " -> ".join(str(f.relative_to(root)) for f in found), file=sys.stderr)
sys.exit(1 if failed else 0)
