"""Module-cycle lint: fails when the modules of a crate use each other in a cycle.

For each library crate given (its `src/` directory), every module (a file, or an inline `mod`
with a body) is a node, and a module that names an item of another (`use crate::a::B`,
`super::C`, `crate::a::f()` inline) has an edge to the deepest module that path names. Test
code (`#[cfg(test)]` modules, and files declared as one) is left out: tests may reach
anywhere. A strongly connected set of more than one module is a cycle, printed with the uses
that make it; the exit status is then 1.

Usage: python3 scripts/modcycles.py [--allow FILE] CRATE_SRC_DIR...

`--allow FILE` names cycles still being taken apart, one per line as printed ("SRC: a, b"):
they are reported but pass, and a line of FILE that is no longer a cycle fails, so that the
list only shrinks.
"""

import os
import re
import sys

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
# A char or byte literal (not a lifetime): 'x', '\n', '\x7f', '\u{fffd}'.
CHAR = re.compile(r"'(\\u\{[0-9a-fA-F]+\}|\\x[0-9a-fA-F]{2}|\\.|[^\\'\n])'")


def strip(text):
    """`text` without comments, string and char literals (their insides become spaces, so
    offsets and line numbers stay)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:]) and not re.match(r"\w", text[i - 1 : i]):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            j = n if end < 0 else end + 1 + len(hashes)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(re.sub(r"[^\n]", " ", text[i : j + 1]))
            i = j + 1
        elif c == "'" and (m := CHAR.match(text, i)):
            out.append(" " * len(m.group(0)))
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def matching_brace(text, open_at):
    depth = 0
    for j in range(open_at, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    return len(text)


def use_paths(tree):
    """The paths a `use` tree names: `a::{b, c::{d, e}}` gives a::b, a::c::d, a::c::e."""
    tree = re.sub(r"\s+", "", tree)
    if "{" not in tree:
        path = re.sub(r"\bas\w+$", "", tree.split(" as ")[0])
        return [path.removesuffix("::*")]
    head, rest = tree.split("{", 1)
    inner = rest[: rest.rfind("}")]
    parts, depth, start = [], 0, 0
    for i, c in enumerate(inner):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(inner[start:i])
            start = i + 1
    parts.append(inner[start:])
    out = []
    for part in parts:
        if part:
            for path in use_paths(part):
                out.append(head + path if path != "self" else head.removesuffix("::"))
    return out


class Crate:
    def __init__(self, src):
        self.src = src
        self.modules = set()
        # (from, to) -> the first place naming `to` from `from`.
        self.edges = {}
        # Paths named, resolved once every module is known.
        self.pending = []
        root = os.path.join(src, "lib.rs")
        self.read_file(root, ())

    def read_file(self, path, module):
        with open(path) as f:
            text = strip(f.read())
        self.read_module(text, module, path, self.child_dir(path, module))

    def child_dir(self, path, module):
        base = os.path.basename(path)
        if base in ("lib.rs", "mod.rs", "main.rs"):
            return os.path.dirname(path)
        return path[: -len(".rs")]

    def read_module(self, text, module, path, directory):
        self.modules.add(module)
        # Child modules: declared (`mod x;`) or inline (`mod x { ... }`); test ones skipped.
        blanked = list(text)
        for m in re.finditer(
            r"((?:#\[[^\]]*\]\s*)*)(?:pub(?:\([^)]*\))?\s+)?mod\s+(%s)\s*([;{])" % IDENT, text
        ):
            attrs, name, kind = m.group(1), m.group(2), m.group(3)
            is_test = "cfg(test)" in attrs.replace(" ", "")
            if kind == "{":
                close = matching_brace(text, m.end() - 1)
                body = text[m.end() : close]
                if not is_test:
                    self.read_module(body, (*module, name), path, os.path.join(directory, name))
                for k in range(m.start(), min(close + 1, len(blanked))):
                    if blanked[k] != "\n":
                        blanked[k] = " "
                continue
            if is_test:
                continue
            for candidate in (
                os.path.join(directory, name + ".rs"),
                os.path.join(directory, name, "mod.rs"),
            ):
                if os.path.exists(candidate):
                    self.read_file(candidate, (*module, name))
                    break

        own = "".join(blanked)
        for m in re.finditer(r"\buse\s+([^;]+);", own):
            for used in use_paths(m.group(1)):
                self.refer(module, used, path, own, m.start())
        # A path may start with a child module's name, in a `use` or inline.
        children = [c[-1] for c in self.modules if c[:-1] == module and len(c) == len(module) + 1]
        starts = ["crate", "super", "self", *children]
        pattern = r"(?<![:\w])((?:%s)(?:::%s)+)" % ("|".join(starts), IDENT)
        for m in re.finditer(pattern, own):
            if not re.search(r"\buse\s+[^;]*$", own[max(0, m.start() - 200) : m.start()]):
                self.refer(module, m.group(1), path, own, m.start())

    def refer(self, module, used, path, text, at):
        segments = used.split("::")
        if segments[0] == "crate":
            target, segments = (), segments[1:]
        elif segments[0] in ("super", "self"):
            target = module
            while segments and segments[0] in ("super", "self"):
                if segments[0] == "super":
                    target = target[:-1]
                segments = segments[1:]
        elif (*module, segments[0]) in self.modules:
            target = module
        else:
            return
        self.pending.append((module, target, segments, path, text.count("\n", 0, at) + 1))

    def resolve(self):
        for module, target, segments, path, line in self.pending:
            for s in segments:
                if (*target, s) in self.modules:
                    target = (*target, s)
                else:
                    break
            if target == module:
                continue
            self.edges.setdefault((module, target), "%s:%d" % (path, line))


def cycles(crate):
    graph = {}
    for a, b in crate.edges:
        graph.setdefault(a, set()).add(b)
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(crate.modules):
        if v not in index:
            visit(v)
    return out


def name(module):
    return "::".join(("crate", *module))


def self_test():
    """The lint on small crates made for it: each must be found as it is, or the lint is
    broken. Run by scripts/check before the real crates."""
    import tempfile

    crates = {
        # A cycle through `use crate::`, one through a child's `super::`, and a relative path.
        "two": (
            {"lib.rs": "mod a;\nmod b;", "a.rs": "use crate::b::B;", "b.rs": "use crate::a::A;"},
            1,
        ),
        "child": ({"lib.rs": "mod c;\nuse c::C;\npub struct P;", "c.rs": "use super::P;"}, 1),
        "inline": (
            {"lib.rs": "pub struct P;\nmod d { fn f() { let _ = super::P; } }\nfn g() { d::f() }"},
            1,
        ),
        # Layers without a cycle; tests, comments and strings reach anywhere.
        "clean": (
            {
                "lib.rs": "mod a;\nmod b;\n// use crate::b;\n#[cfg(test)]\nmod tests;",
                "a.rs": 'use crate::b::B;\nconst S: &str = "crate::a::A";\n'
                "#[cfg(test)]\nmod tests { use crate::a; }",
                "b.rs": "pub struct B;\nfn f() -> char { '{' }",
                "tests.rs": "use crate::a;\nuse crate::b;",
            },
            0,
        ),
    }
    for label, (files, want) in crates.items():
        with tempfile.TemporaryDirectory() as src:
            for name_, text in files.items():
                with open(os.path.join(src, name_), "w") as f:
                    f.write(text)
            crate = Crate(src)
            crate.resolve()
            got = len(cycles(crate))
            if got != want:
                raise SystemExit(
                    "modcycles self-test %r: %d cycles, expected %d" % (label, got, want)
                )


def main():
    self_test()
    args = sys.argv[1:]
    allowed = set()
    if args[:1] == ["--allow"]:
        with open(args[1]) as f:
            allowed = {line.strip() for line in f if line.strip() and not line.startswith("#")}
        args = args[2:]
    failed = False
    found = set()
    for src in args:
        crate = Crate(src)
        crate.resolve()
        for component in cycles(crate):
            members = set(component)
            key = "%s: %s" % (src.rstrip("/"), ", ".join(map(name, component)))
            found.add(key)
            known = key in allowed
            failed |= not known
            print(
                "%s: a cycle of %d modules%s: %s"
                % (
                    src,
                    len(component),
                    " (known)" if known else "",
                    ", ".join(map(name, component)),
                )
            )
            for (a, b), where in sorted(crate.edges.items()):
                if a in members and b in members:
                    print("  %s -> %s  (%s)" % (name(a), name(b), where))
    for gone in sorted(allowed - found):
        failed = True
        print("no longer a cycle, take it off the allowed list: %s" % gone)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
