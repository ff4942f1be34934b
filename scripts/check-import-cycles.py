#!/usr/bin/env python3
"""File-level import-cycle check for the crates of the slim workspace.

For every workspace member (the `members` of the root Cargo.toml) this walks
each crate's `src/` tree from its crate roots (`src/lib.rs`, `src/main.rs`,
`src/bin/*.rs`, and `[lib]`/`[[bin]]` paths under `src/`) by following `mod`
declarations, so every source file gets its module path: the root is the
crate root, `foo.rs` or `foo/mod.rs` is `foo`, nested directories nest, a
`#[path = "..."]` attribute is honoured, and an inline `mod x { ... }` block is
a module that lives in the file it is written in.  `tests/`, `benches/` and
`examples/` are never read.

What counts as an edge (file A -> file B): A *uses an item* that lives in B,
i.e. A's code names a path that resolves into B's module:

  * `use crate::x::...`, including groups (`use crate::{a, b::{c, d}}`, over
    several lines), `self`/`super` use paths, and `use child::...` of a module
    declared in A;
  * inline paths in code: `crate::x::f(...)`, `super::...`, `self::...`, and
    `name::...` where `name` is a child module of A's module or a name A
    imported with `use` (so `use crate::conn; ... conn::encode(..)` is an edge
    to `conn`, and `use crate::a; a::b::X` to `a::b`);
  * relative paths are resolved against the module they are written in
    (A's module, or the inline module around them).

A path resolves to the file of its LONGEST module prefix that is a file
(`crate::a::b::Item` -> the file of `a::b` if that module is a file, else the
file of `a`; `crate::Item` -> the crate root).  Edges from a file to itself
are dropped.

Why these and not others: an edge should mean "A's code needs B's code", the
dependency a refactor has to cut.  So these do NOT count:

  * `mod x;` declarations: they place a file in the tree, they do not use it;
  * `pub use ...` / `pub(crate) use ...` re-exports: a facade re-exporting
    names makes the facade a doorway, not a user (a file naming
    `crate::Item` depends on the crate root, whose re-exports are not edges);
  * anything under `#[cfg(test)]` (a `mod tests { ... }` block, a test-only
    function or `use`), and files declared only under `#[cfg(test)]`: tests
    may reach across modules without making the production code circular;
  * comments (including doc comments and their intra-doc links) and string
    literals: they mention paths, they do not use them.

Then it computes the strongly connected components of the file graph
(Tarjan) and, per crate, prints every component with more than one file --
its sorted files and one example chain of edges that closes the circle --
or a one-line OK.  Exit status: 1 if any crate has a cycle, 0 otherwise,
2 on usage errors.

    scripts/check-import-cycles.py [--crate NAME] [--root DIR] [--edges]

`--crate` takes a package name (`slim-actors`) or a member directory
(`actors`); `--root` defaults to the repository this script lives in;
`--edges` also lists every edge inside each cycle (what a refactor must cut).
"""

import argparse
import glob
import os
import sys
import tomllib
from collections import deque

# ---------------------------------------------------------------- tokenizer


class Tok:
    __slots__ = ("kind", "val", "line")

    def __init__(self, kind, val, line):
        self.kind = kind  # 'id', 'str', 'p' (punctuation), 'lit' (other literal)
        self.val = val
        self.line = line

    def __repr__(self):
        return f"{self.kind}:{self.val!r}@{self.line}"


def _is_id_start(c):
    return c == "_" or c.isalpha()


def _is_id_char(c):
    return c == "_" or c.isalnum()


def tokenize(src):
    """Rust source -> tokens; comments are dropped, string literals become
    single 'str' tokens (their contents are never read as code)."""
    toks = []
    i, n, line = 0, len(src), 1
    while i < n:
        c = src[i]
        if c == "\n":
            line += 1
            i += 1
            continue
        if c.isspace():
            i += 1
            continue
        if src.startswith("//", i):
            j = src.find("\n", i)
            i = n if j < 0 else j
            continue
        if src.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if src.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif src.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    if src[i] == "\n":
                        line += 1
                    i += 1
            continue
        # raw strings: r"..", r#".."#, br"..", cr".."
        j = i
        if src.startswith(("br", "cr"), j):
            j += 2
        elif c == "r":
            j += 1
        if j > i and j < n and src[j] in '#"':
            k = j
            while k < n and src[k] == "#":
                k += 1
            if k < n and src[k] == '"':
                hashes = k - j
                end = src.find('"' + "#" * hashes, k + 1)
                end = n if end < 0 else end
                body = src[k + 1 : end]
                toks.append(Tok("str", body, line))
                line += body.count("\n")
                i = end + 1 + hashes
                continue
        # strings: "..", b"..", c".."
        if c == '"' or (c in "bc" and i + 1 < n and src[i + 1] == '"'):
            k = i + (0 if c == '"' else 1) + 1
            start_line = line
            buf = []
            while k < n and src[k] != '"':
                if src[k] == "\\":
                    buf.append(src[k : k + 2])
                    if k + 1 < n and src[k + 1] == "\n":
                        line += 1
                    k += 2
                    continue
                if src[k] == "\n":
                    line += 1
                buf.append(src[k])
                k += 1
            toks.append(Tok("str", "".join(buf), start_line))
            i = k + 1
            continue
        # char literals (also b'x') versus lifetimes/labels ('a)
        if c == "'" or (c == "b" and i + 1 < n and src[i + 1] == "'"):
            q = i if c == "'" else i + 1
            if q + 1 < n and src[q + 1] == "\\":
                k = q + 2
                while k < n and src[k] != "'":
                    k += 1
                toks.append(Tok("lit", src[q : k + 1], line))
                i = k + 1
                continue
            if q + 2 < n and src[q + 2] == "'":
                toks.append(Tok("lit", src[q : q + 3], line))
                i = q + 3
                continue
            if c == "'":  # lifetime or label
                k = q + 1
                while k < n and _is_id_char(src[k]):
                    k += 1
                toks.append(Tok("lit", src[q:k], line))
                i = k
                continue
        if _is_id_start(c):
            k = i + 1
            while k < n and _is_id_char(src[k]):
                k += 1
            word = src[i:k]
            if word == "r" and k < n and src[k] == "#" and k + 1 < n and _is_id_start(src[k + 1]):
                m = k + 2
                while m < n and _is_id_char(src[m]):
                    m += 1
                word, k = src[k + 1 : m], m
            toks.append(Tok("id", word, line))
            i = k
            continue
        if c.isdigit():
            k = i + 1
            while k < n and _is_id_char(src[k]):
                k += 1
            toks.append(Tok("lit", src[i:k], line))
            i = k
            continue
        if src.startswith("::", i):
            toks.append(Tok("p", "::", line))
            i += 2
            continue
        toks.append(Tok("p", c, line))
        i += 1
    return toks


# ---------------------------------------------------------------- attributes


def _cfg_implies_test(toks, i):
    """Parse one cfg predicate at toks[i]; return (implies_test, next_index)."""
    if i >= len(toks) or toks[i].kind != "id":
        return False, i + 1
    name = toks[i].val
    i += 1
    if i < len(toks) and toks[i].val == "=":  # key = "value"
        return False, i + 2
    if i < len(toks) and toks[i].val == "(":
        i += 1
        kids = []
        while i < len(toks) and toks[i].val != ")":
            v, i = _cfg_implies_test(toks, i)
            kids.append(v)
            if i < len(toks) and toks[i].val == ",":
                i += 1
        i += 1
        if name == "all":
            return any(kids), i
        if name == "any":
            return bool(kids) and all(kids), i
        return False, i  # not(..) and anything else
    return name == "test", i


def attr_info(body):
    """body: the tokens between `#[` and `]`.  Returns ('test', None),
    ('path', "file.rs") or (None, None)."""
    if not body or body[0].kind != "id":
        return None, None
    if body[0].val == "cfg" and len(body) > 1 and body[1].val == "(":
        implies, _ = _cfg_implies_test(body, 2)
        return ("test", None) if implies else (None, None)
    if body[0].val == "path" and len(body) > 2 and body[1].val == "=" and body[2].kind == "str":
        return "path", body[2].val
    return None, None


# ---------------------------------------------------------------- file scan

ITEM_KEYWORDS = {
    "pub", "fn", "impl", "struct", "enum", "trait", "mod", "const", "static",
    "type", "use", "extern", "unsafe", "async", "macro_rules", "union", "let",
    "crate",
}
OPEN = {"(": ")", "[": "]", "{": "}"}
CLOSE = {")", "]", "}"}


class FileScan:
    """What one file declares and references (outside test-only code).

    mods: (name, path_attr or None, is_test, inline_chain)
    inline: set of inline module chains (tuples of names)
    refs: (inline_chain, segments, display, line) -- every path that may be local
    aliases: {inline_chain: {name: segments}} -- names brought in by `use`
    """

    def __init__(self):
        self.mods = []
        self.inline = set()
        self.refs = []
        self.aliases = {}
        self.file_test = False


def _vis_start(toks, i):
    """Index of the `pub` that makes toks[i] (a `use`/`mod`) visible, else i."""
    j = i - 1
    if j >= 0 and toks[j].val == ")":
        depth = 0
        while j >= 0:
            if toks[j].val == ")":
                depth += 1
            elif toks[j].val == "(":
                depth -= 1
                if depth == 0:
                    break
            j -= 1
        j -= 1
    if j >= 0 and toks[j].kind == "id" and toks[j].val == "pub":
        return j
    return i


def _parse_use_tree(toks, i, prefix, out):
    """Parse a use tree at toks[i] with path `prefix`; append
    (segments, alias_or_None) to out.  Returns the index after the tree."""
    segs = list(prefix)
    n = len(toks)
    if i < n and toks[i].val == "::":  # `use ::std::..`
        i += 1
    while i < n:
        t = toks[i]
        if t.val == "{":
            i += 1
            while i < n and toks[i].val != "}":
                i = _parse_use_tree(toks, i, segs, out)
                if i < n and toks[i].val == ",":
                    i += 1
            return i + 1
        if t.val == "*":
            out.append((segs, None, True))
            return i + 1
        if t.kind == "id":
            if t.val == "self" and segs:  # `a::{self, ..}`
                pass
            else:
                segs = segs + [t.val]
            i += 1
            if i < n and toks[i].val == "::":
                i += 1
                continue
            alias = segs[-1] if segs else None
            if t.val == "self" and prefix:
                alias = prefix[-1]
            if i + 1 < n and toks[i].val == "as":
                alias = toks[i + 1].val
                i += 2
            out.append((segs, alias, False))
            return i
        return i + 1  # malformed; move on
    return i


def scan_file(src):
    toks = tokenize(src)
    fs = FileScan()
    n = len(toks)
    pending = []  # attributes waiting for their item
    attrs_at, attrs = -1, []  # the last item's attributes and where it began
    regions = []  # test regions: [base_depth, opened, itemish]
    stack = []  # open brackets: (bracket, inline-mod name or None)
    inline_next = None  # name of an inline `mod x {` awaiting its brace
    depth = 0

    def chain():
        return tuple(name for _, name in stack if name is not None)

    def in_test():
        return fs.file_test or bool(regions)

    i = 0
    while i < n:
        t = toks[i]
        v = t.val
        # attributes
        if v == "#" and t.kind == "p" and i + 1 < n:
            inner = toks[i + 1].val == "!"
            k = i + (2 if inner else 1)
            if k < n and toks[k].val == "[":
                d, m = 0, k
                while m < n:
                    if toks[m].val in OPEN:
                        d += 1
                    elif toks[m].val in CLOSE:
                        d -= 1
                        if d == 0:
                            break
                    m += 1
                kind, val = attr_info(toks[k + 1 : m])
                if inner:
                    if kind == "test":
                        if depth == 0:
                            fs.file_test = True
                        else:
                            regions.append([depth - 1, True, True])
                else:
                    pending.append((kind, val))
                i = m + 1
                continue
        if pending:
            attrs, attrs_at, pending = pending, i, []
            if any(k == "test" for k, _ in attrs):
                itemish = t.kind == "id" and v in ITEM_KEYWORDS
                regions.append([depth, False, itemish])
        # brackets and the ends of test regions
        if t.kind == "p":
            if v in OPEN:
                if v == "{" and regions and regions[-1][0] == depth:
                    regions[-1][1] = True
                stack.append((v, inline_next if v == "{" else None))
                inline_next = None
                depth += 1
            elif v in CLOSE:
                if stack:
                    stack.pop()
                depth -= 1
                while regions and (
                    regions[-1][0] > depth
                    or (regions[-1][0] == depth and regions[-1][1] and v == "}")
                ):
                    regions.pop()
            elif v == ";":
                while regions and regions[-1][0] == depth and not regions[-1][1]:
                    regions.pop()
                inline_next = None
            elif v == ",":
                while (
                    regions
                    and regions[-1][0] == depth
                    and not regions[-1][1]
                    and not regions[-1][2]
                ):
                    regions.pop()
            i += 1
            continue
        if t.kind != "id":
            i += 1
            continue
        # `mod name;` / `mod name {`
        if v == "mod" and i + 2 < n and toks[i + 1].kind == "id":
            name = toks[i + 1].val
            mine = attrs if attrs_at == _vis_start(toks, i) else []
            if toks[i + 2].val == ";":
                path_attr = next((val for k, val in mine if k == "path"), None)
                fs.mods.append((name, path_attr, in_test(), chain()))
            elif toks[i + 2].val == "{":
                inline_next = name
                if not in_test():
                    fs.inline.add(chain() + (name,))
            i += 2
            continue
        # `use ...;`
        if v == "use":
            is_pub = _vis_start(toks, i) != i
            out = []
            j = i + 1
            while j < n and toks[j].val != ";":
                j = _parse_use_tree(toks, j, [], out)
            if not in_test():
                ch = chain()
                for segs, alias, glob_ in out:
                    if not segs:
                        continue
                    if alias and not glob_ and alias != "_":
                        fs.aliases.setdefault(ch, {})[alias] = segs
                    if not is_pub:
                        disp = "::".join(segs) + ("::*" if glob_ else "")
                        fs.refs.append((ch, segs, disp, t.line))
            i = j  # the `;` goes through the main loop (ends regions)
            continue
        # inline paths: `a::b::c` (not the tail of a longer path)
        if i + 2 < n and toks[i + 1].val == "::" and toks[i + 2].kind == "id":
            if i > 0 and toks[i - 1].val == "::":
                i += 1
                continue
            segs = [v]
            if v == "crate" and i > 0 and toks[i - 1].val == "$":
                segs = ["crate"]
            j = i + 1
            while j + 1 < n and toks[j].val == "::" and toks[j + 1].kind == "id":
                segs.append(toks[j + 1].val)
                j += 2
            if not in_test():
                fs.refs.append((chain(), segs, "::".join(segs), t.line))
            i = j
            continue
        i += 1
    return fs


# ---------------------------------------------------------------- crates


class Crate:
    def __init__(self, name, dirname, path):
        self.name = name
        self.dirname = dirname
        self.path = path
        self.src = os.path.join(path, "src")
        self.files = {}  # rel path -> FileScan
        self.test_only = set()
        # per crate root: module path tuple -> rel file
        self.trees = []


def workspace_crates(root):
    with open(os.path.join(root, "Cargo.toml"), "rb") as f:
        ws = tomllib.load(f).get("workspace", {})
    excluded = {os.path.normpath(os.path.join(root, e)) for e in ws.get("exclude", [])}
    crates = []
    for member in ws.get("members", []):
        for path in sorted(glob.glob(os.path.join(root, member))):
            path = os.path.normpath(path)
            manifest = os.path.join(path, "Cargo.toml")
            if path in excluded or not os.path.isfile(manifest):
                continue
            with open(manifest, "rb") as f:
                pkg = tomllib.load(f)
            name = pkg.get("package", {}).get("name", os.path.basename(path))
            c = Crate(name, os.path.relpath(path, root), path)
            c.manifest = pkg
            crates.append(c)
    return crates


def crate_roots(c):
    roots = []
    for p in ("lib.rs", "main.rs"):
        if os.path.isfile(os.path.join(c.src, p)):
            roots.append(p)
    bindir = os.path.join(c.src, "bin")
    if os.path.isdir(bindir):
        for e in sorted(os.listdir(bindir)):
            if e.endswith(".rs"):
                roots.append("bin/" + e)
            elif os.path.isfile(os.path.join(bindir, e, "main.rs")):
                roots.append(f"bin/{e}/main.rs")
    targets = [c.manifest.get("lib", {})] + list(c.manifest.get("bin", []))
    for tgt in targets:
        p = tgt.get("path")
        if not p:
            continue
        rel = os.path.relpath(os.path.normpath(os.path.join(c.path, p)), c.src)
        if not rel.startswith("..") and rel not in roots:
            roots.append(rel)
    return roots


def load_crate(c):
    """Walk the module tree from every crate root; fill c.files and c.trees."""
    for root in crate_roots(c):
        modules = {}  # module path -> rel file
        file_mod = {}  # rel file -> module path (in this tree)
        work = [(root, (), True)]  # (rel file, module path, is mod-rs)
        while work:
            rel, mpath, modrs = work.pop()
            if rel in file_mod:
                continue
            full = os.path.join(c.src, rel)
            if rel not in c.files:
                with open(full, encoding="utf-8") as f:
                    c.files[rel] = scan_file(f.read())
            fs = c.files[rel]
            if fs.file_test:
                c.test_only.add(rel)
                continue
            file_mod[rel] = mpath
            modules[mpath] = rel
            for ch in fs.inline:
                modules.setdefault(mpath + ch, rel)
            d = os.path.dirname(rel)
            own = d if modrs else os.path.join(d, os.path.splitext(os.path.basename(rel))[0])
            for name, path_attr, is_test, ch in fs.mods:
                if path_attr is not None:
                    base = d if not ch else os.path.join(own, *ch)
                    cands = [(os.path.normpath(os.path.join(base, path_attr)), True)]
                else:
                    base = os.path.join(own, *ch)
                    cands = [
                        (os.path.normpath(os.path.join(base, name + ".rs")), False),
                        (os.path.normpath(os.path.join(base, name, "mod.rs")), True),
                    ]
                for cand, cand_modrs in cands:
                    if os.path.isfile(os.path.join(c.src, cand)):
                        if is_test:
                            c.test_only.add(cand)
                        else:
                            work.append((cand, mpath + ch + (name,), cand_modrs))
                        break
        c.trees.append((modules, file_mod))
    # a file that some tree includes for real is not test-only
    for modules, file_mod in c.trees:
        c.test_only -= set(file_mod)


def resolve(segs, ctx, modules, aliases_at, seen=None):
    """Absolute module path for `segs` written in module `ctx`, or None when
    the path does not start inside this crate."""
    head, rest = segs[0], list(segs[1:])
    if head == "crate":
        base = []
    elif head in ("self", "super"):
        base = list(ctx)
        if head == "super":
            if not base:
                return None
            base.pop()
        while rest and rest[0] == "super":
            if not base:
                return None
            base.pop()
            rest.pop(0)
    elif tuple(ctx) + (head,) in modules:
        base = list(ctx) + [head]
    else:
        table = aliases_at(tuple(ctx))
        target = table.get(head)
        if target is None:
            return None
        seen = seen or set()
        key = (tuple(ctx), head)
        if key in seen:
            return None
        seen.add(key)
        base = resolve(target, ctx, modules, aliases_at, seen)
        if base is None:
            return None
    return base + rest


def longest_file(abs_path, modules):
    for k in range(len(abs_path), -1, -1):
        f = modules.get(tuple(abs_path[:k]))
        if f is not None:
            return f
    return None


def crate_edges(c):
    """{(a, b): (display, line)} for every file edge a -> b (first reference)."""
    edges = {}
    for modules, file_mod in c.trees:
        for rel, mpath in file_mod.items():
            fs = c.files[rel]

            def aliases_at(ctx, fs=fs, mpath=mpath):
                return fs.aliases.get(ctx[len(mpath):], {})

            for ch, segs, disp, line in fs.refs:
                if len(segs) < 2 and segs[0] not in ("crate", "self", "super"):
                    continue
                ctx = mpath + ch
                target = resolve(segs, ctx, modules, aliases_at)
                if target is None:
                    continue
                dest = longest_file(target, modules)
                if dest is None or dest == rel:
                    continue
                old = edges.get((rel, dest))
                if old is None or line < old[1]:
                    edges[(rel, dest)] = (disp, line)
    return edges


def tarjan(nodes, succ):
    """Strongly connected components (iterative Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = 0
    for start in nodes:
        if start in index:
            continue
        work = [(start, iter(succ.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on.add(start)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(succ.get(w, ()))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(sorted(comp))
    return out


def example_cycle(comp, succ):
    """Shortest cycle through the first file of the component."""
    members = set(comp)
    start = comp[0]
    parent = {start: None}
    q = deque([start])
    while q:
        u = q.popleft()
        for w in sorted(succ.get(u, ())):
            if w not in members:
                continue
            if w == start:
                path = [u]
                while parent[path[-1]] is not None:
                    path.append(parent[path[-1]])
                return list(reversed(path)) + [start]
            if w not in parent:
                parent[w] = u
                q.append(w)
    return [start]


def check_crate(c, show_edges=False, out=sys.stdout):
    load_crate(c)
    edges = crate_edges(c)
    succ = {}
    for a, b in edges:
        succ.setdefault(a, set()).add(b)
    nodes = sorted(set(c.files) - c.test_only)
    succ_sorted = {k: sorted(v) for k, v in succ.items()}
    comps = [comp for comp in tarjan(nodes, succ_sorted) if len(comp) > 1]
    comps.sort()
    if not comps:
        print(
            f"{c.name} ({c.dirname}/src): OK, {len(nodes)} files, {len(edges)} edges, no import cycle",
            file=out,
        )
        return False
    print(f"{c.name} ({c.dirname}/src): {len(comps)} import cycle(s)", file=out)
    for k, comp in enumerate(comps, 1):
        print(f"  cycle {k}: {len(comp)} files: {', '.join(comp)}", file=out)
        cyc = example_cycle(comp, succ_sorted)
        chain = cyc[0]
        for a, b in zip(cyc, cyc[1:]):
            disp, line = edges[(a, b)]
            chain += f" -> {b} ({disp}, {a}:{line})"
        print(f"    e.g. {chain}", file=out)
        if show_edges:
            members = set(comp)
            for (a, b), (disp, line) in sorted(edges.items()):
                if a in members and b in members:
                    print(f"    edge {a} -> {b} ({disp}, {a}:{line})", file=out)
    return True


def main(argv=None):
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(
        description="Find file-level import cycles in the workspace crates."
    )
    ap.add_argument("--crate", help="check one crate (package name or member directory)")
    ap.add_argument("--root", default=os.path.dirname(here), help="workspace root")
    ap.add_argument("--edges", action="store_true", help="list every edge inside each cycle")
    args = ap.parse_args(argv)
    crates = workspace_crates(args.root)
    if args.crate:
        crates = [c for c in crates if args.crate in (c.name, c.dirname)]
        if not crates:
            print(f"no workspace crate named {args.crate!r}", file=sys.stderr)
            return 2
    bad = False
    for c in crates:
        bad |= check_crate(c, args.edges)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
