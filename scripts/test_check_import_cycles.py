#!/usr/bin/env python3
"""Self-test for scripts/check-import-cycles.py: builds small fake workspaces
in a temporary directory and checks the edges and cycles the script finds.

Run with `python3 scripts/test_check_import_cycles.py` or
`python3 -m unittest discover -s scripts -p 'test_check_import_cycles.py'`.
"""

import importlib.util
import io
import os
import subprocess
import sys
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(HERE, "check-import-cycles.py")

_spec = importlib.util.spec_from_file_location("check_import_cycles", SCRIPT)
cic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(cic)


class FakeWorkspace:
    """A workspace with crates made of the given {relative path: source}."""

    def __init__(self, tmp):
        self.root = tmp
        self.members = []

    def crate(self, name, files):
        d = os.path.join(self.root, name)
        os.makedirs(os.path.join(d, "src"), exist_ok=True)
        with open(os.path.join(d, "Cargo.toml"), "w") as f:
            f.write(f'[package]\nname = "fake-{name}"\nversion = "0.1.0"\n')
        for rel, src in files.items():
            p = os.path.join(d, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w") as f:
                f.write(textwrap.dedent(src))
        self.members.append(name)
        with open(os.path.join(self.root, "Cargo.toml"), "w") as f:
            f.write("[workspace]\nmembers = [%s]\n" % ", ".join(f'"{m}"' for m in self.members))
        return self

    def analyse(self, name):
        """(edges {(a, b)}, cycles [[files]]) of crate `name`."""
        [c] = [c for c in cic.workspace_crates(self.root) if c.dirname == name]
        cic.load_crate(c)
        edges = cic.crate_edges(c)
        succ = {}
        for a, b in edges:
            succ.setdefault(a, []).append(b)
        nodes = sorted(set(c.files) - c.test_only)
        cycles = [comp for comp in cic.tarjan(nodes, succ) if len(comp) > 1]
        return set(edges), sorted(cycles)

    def run(self, *args):
        return subprocess.run(
            [sys.executable, SCRIPT, "--root", self.root, *args],
            capture_output=True,
            text=True,
        )


class CheckImportCycles(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.ws = FakeWorkspace(self._tmp.name)

    def tearDown(self):
        self._tmp.cleanup()

    def test_two_file_cycle_is_found(self):
        self.ws.crate(
            "two",
            {
                "src/lib.rs": "mod a;\nmod b;\n",
                "src/a.rs": "use crate::b::helper;\npub fn a() { helper() }\n",
                "src/b.rs": "pub fn helper() { crate::a::a() }\n",
            },
        )
        edges, cycles = self.ws.analyse("two")
        self.assertEqual(edges, {("a.rs", "b.rs"), ("b.rs", "a.rs")})
        self.assertEqual(cycles, [["a.rs", "b.rs"]])
        r = self.ws.run()
        self.assertEqual(r.returncode, 1, r.stdout + r.stderr)
        self.assertIn("cycle 1: 2 files: a.rs, b.rs", r.stdout)
        self.assertIn(
            "a.rs -> b.rs (crate::b::helper, a.rs:1) -> a.rs (crate::a::a, b.rs:1)", r.stdout
        )

    def test_no_cycle_prints_ok_and_exits_zero(self):
        self.ws.crate(
            "fine",
            {
                "src/lib.rs": "mod a;\nmod b;\n",
                "src/a.rs": "use crate::b::helper;\npub fn a() { helper() }\n",
                "src/b.rs": "pub fn helper() {}\n",
            },
        )
        r = self.ws.run("--crate", "fake-fine")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertEqual(r.stdout.count("\n"), 1)
        self.assertIn("fake-fine (fine/src): OK", r.stdout)
        self.assertEqual(self.ws.run("--crate", "nope").returncode, 2)

    def test_pub_use_reexport_is_not_an_edge(self):
        self.ws.crate(
            "facade",
            {
                "src/lib.rs": """\
                    mod a;
                    mod b;
                    pub use a::Thing;
                    pub(crate) use b::{Other, more::*};
                    pub fn root_helper() {}
                """,
                "src/a.rs": "use crate::root_helper;\npub struct Thing;\n",
                "src/b.rs": "pub struct Other;\nfn f() { crate::root_helper() }\n",
            },
        )
        edges, cycles = self.ws.analyse("facade")
        self.assertEqual(edges, {("a.rs", "lib.rs"), ("b.rs", "lib.rs")})
        self.assertEqual(cycles, [])
        self.assertEqual(self.ws.run().returncode, 0)

    def test_super_from_a_child_its_parent_calls_is_a_cycle(self):
        self.ws.crate(
            "sup",
            {
                "src/lib.rs": "mod parent;\nmod other;\n",
                "src/parent/mod.rs": """\
                    mod child;
                    pub fn run() { child::go() }
                    pub fn helper() {}
                """,
                "src/parent/child.rs": "pub fn go() { super::helper() }\n",
                "src/other.rs": "mod kid;\npub fn run() { self::kid::go() }\npub fn h() {}\n",
                "src/other/kid.rs": "use super::h;\npub fn go() { h() }\n",
            },
        )
        edges, cycles = self.ws.analyse("sup")
        self.assertIn(("parent/mod.rs", "parent/child.rs"), edges)
        self.assertIn(("parent/child.rs", "parent/mod.rs"), edges)
        self.assertEqual(
            cycles, [["other.rs", "other/kid.rs"], ["parent/child.rs", "parent/mod.rs"]]
        )

    def test_cfg_test_code_is_ignored(self):
        self.ws.crate(
            "cfgt",
            {
                "src/lib.rs": "mod a;\nmod b;\n#[cfg(test)]\nmod testutil;\n",
                "src/a.rs": """\
                    use crate::b::B;
                    pub struct A;
                    #[cfg(test)]
                    use crate::testutil::fixture;
                """,
                "src/b.rs": """\
                    pub struct B;
                    #[cfg(test)]
                    mod tests {
                        use crate::a::A;
                        #[test]
                        fn t() { let _ = (A, crate::a::A); }
                    }
                    #[cfg(all(test, feature = "x"))]
                    fn only_in_tests() { crate::a::A; }
                    pub fn after() {}
                """,
                "src/testutil.rs": "use crate::a::A;\npub fn fixture() -> A { A }\n",
            },
        )
        edges, cycles = self.ws.analyse("cfgt")
        self.assertEqual(edges, {("a.rs", "b.rs")})
        self.assertEqual(cycles, [])

    def test_cfg_not_test_is_not_test_code(self):
        self.ws.crate(
            "nott",
            {
                "src/lib.rs": "mod a;\nmod b;\n",
                "src/a.rs": "use crate::b::B;\npub struct A;\n",
                "src/b.rs": "pub struct B;\n#[cfg(not(test))]\nuse crate::a::A;\n",
            },
        )
        _, cycles = self.ws.analyse("nott")
        self.assertEqual(cycles, [["a.rs", "b.rs"]])

    def test_grouped_multiline_use_produces_every_edge(self):
        self.ws.crate(
            "grp",
            {
                "src/lib.rs": "mod a;\nmod b;\nmod c;\n",
                "src/a.rs": "pub struct X;\n",
                "src/b.rs": "pub struct Y;\npub struct Z;\n",
                "src/c.rs": """\
                    use crate::{
                        a::X,
                        b::{
                            Y,
                            Z,
                        },
                    };
                """,
            },
        )
        edges, _ = self.ws.analyse("grp")
        self.assertEqual(edges, {("c.rs", "a.rs"), ("c.rs", "b.rs")})

    def test_comments_strings_and_mod_declarations_are_not_edges(self):
        self.ws.crate(
            "quiet",
            {
                "src/lib.rs": "mod a;\nmod b;\n",
                "src/a.rs": "use crate::b::B;\npub struct A;\n",
                "src/b.rs": """\
                    //! See [`crate::a::A`].
                    /* crate::a::A /* nested */ crate::a::A */
                    pub struct B;
                    /// Returns [`crate::a::A`].
                    pub fn f() -> &'static str { "crate::a::A" }
                    pub fn g() -> &'static str { r#"use crate::a::A;"# }
                    pub fn h() -> char { '"' }
                    pub fn i<'a>(x: &'a str) -> &'a str { x }
                """,
            },
        )
        edges, cycles = self.ws.analyse("quiet")
        self.assertEqual(edges, {("a.rs", "b.rs")})
        self.assertEqual(cycles, [])

    def test_path_resolves_to_the_longest_module_prefix_that_is_a_file(self):
        self.ws.crate(
            "deep",
            {
                "src/lib.rs": "mod a;\nmod user;\n",
                "src/a.rs": "pub mod b;\npub mod inline { pub fn f() {} }\n",
                "src/a/b.rs": "pub struct Item;\n",
                "src/user.rs": """\
                    fn f() {
                        let _ = crate::a::b::Item;
                        crate::a::inline::f();
                    }
                """,
            },
        )
        edges, _ = self.ws.analyse("deep")
        self.assertEqual(edges, {("user.rs", "a/b.rs"), ("user.rs", "a.rs")})

    def test_use_aliases_and_path_attribute(self):
        self.ws.crate(
            "alias",
            {
                "src/lib.rs": '#[path = "elsewhere/impl_a.rs"]\nmod a;\nmod b;\n',
                "src/elsewhere/impl_a.rs": "pub mod sub;\npub fn f() {}\n",
                "src/elsewhere/sub.rs": "pub fn g() {}\n",
                "src/b.rs": """\
                    use crate::a as aa;
                    pub fn h() { aa::sub::g(); }
                """,
            },
        )
        edges, _ = self.ws.analyse("alias")
        self.assertEqual(
            edges, {("b.rs", "elsewhere/impl_a.rs"), ("b.rs", "elsewhere/sub.rs")}
        )

    def test_super_inside_an_inline_module_resolves_against_it(self):
        self.ws.crate(
            "inl",
            {
                "src/lib.rs": "mod a;\nmod b;\n",
                "src/a.rs": """\
                    mod inner {
                        pub fn f() { super::super::b::g() }
                        fn same_file() { super::local() }
                    }
                    fn local() {}
                """,
                "src/b.rs": "pub fn g() {}\n",
            },
        )
        edges, _ = self.ws.analyse("inl")
        self.assertEqual(edges, {("a.rs", "b.rs")})

    def test_real_output_lists_every_crate(self):
        self.ws.crate("one", {"src/lib.rs": "pub fn f() {}\n"})
        self.ws.crate("two", {"src/main.rs": "mod x;\nfn main() { x::f() }\n", "src/x.rs": "pub fn f() { super::main() }\n"})
        buf = io.StringIO()
        crates = cic.workspace_crates(self.ws.root)
        bad = [cic.check_crate(c, out=buf) for c in crates]
        self.assertEqual(bad, [False, True])
        self.assertIn("fake-one (one/src): OK", buf.getvalue())
        self.assertIn("main.rs -> x.rs (x::f, main.rs:2) -> main.rs (super::main, x.rs:1)", buf.getvalue())


if __name__ == "__main__":
    unittest.main()
