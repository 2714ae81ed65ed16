"""Tests of scripts/check-module-cycles on small crates made in temp dirs.

Plain unittest cases, so they run with `python3 -m pytest scripts/tests`
and with `python3 -m unittest discover -s scripts/tests` alike.
"""

import importlib.machinery
import importlib.util
import io
import os
import tempfile
import textwrap
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPT = os.path.join(os.path.dirname(HERE), "check-module-cycles")

_loader = importlib.machinery.SourceFileLoader("check_module_cycles", SCRIPT)
_spec = importlib.util.spec_from_loader("check_module_cycles", _loader)
cmc = importlib.util.module_from_spec(_spec)
_loader.exec_module(cmc)


class CrateCase(unittest.TestCase):
    def setUp(self):
        self._tmp = tempfile.TemporaryDirectory()
        self.dir = self._tmp.name
        self.write("Cargo.toml", '[package]\nname = "demo"\nversion = "0.1.0"\n')

    def tearDown(self):
        self._tmp.cleanup()

    def write(self, rel, text):
        path = os.path.join(self.dir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            f.write(textwrap.dedent(text))
        return path

    def crate(self, root="src/lib.rs", **kw):
        return cmc.Crate(os.path.join(self.dir, root), "demo", **kw)

    def edges(self, crate):
        return set(crate.edges)

    def run_main(self, *args):
        out = io.StringIO()
        import contextlib

        with contextlib.redirect_stdout(out):
            rc = cmc.main([*args, "--base", self.dir, self.dir])
        return rc, out.getvalue()


class Tokenizer(unittest.TestCase):
    def texts(self, src):
        return [t.text for t in cmc.tokenize(src) if t.kind != "lit"]

    def test_comments_and_strings_hide_paths(self):
        src = '''
            // crate::a::x
            /// [`crate::b`]
            /* crate::c /* nested crate::d */ crate::e */
            let v1 = "crate::f \\" crate::g";
            let v2 = r#"crate::h "quoted" "#;
            let v3 = b"crate::i";
            let v4 = '"'; let v5 = '\\''; let v6 = b'\\''; let l: &'a str = x;
            real::path
        '''
        texts = self.texts(src)
        for hidden in "abcdefghi":
            self.assertNotIn(hidden, texts)
        self.assertIn("real", texts)
        self.assertIn("str", texts)  # lifetime did not swallow the rest
        self.assertEqual(texts.count("'"), 1)  # only the lifetime's quote

    def test_lines_are_counted_through_multiline_literals(self):
        toks = cmc.tokenize('let s = "a\nb\nc";\n/* x\ny */\nfoo')
        self.assertEqual([t.line for t in toks if t.text == "foo"], [6])

    def test_raw_identifier(self):
        self.assertIn("match", self.texts("r#match::x"))


class UseTrees(unittest.TestCase):
    def parse(self, src):
        toks = cmc.tokenize(src)
        return [(s, a) for s, a, _ in cmc.parse_use_tree(toks)]

    def test_groups_aliases_globs_self(self):
        got = self.parse("crate::{a::X, b::{self, Y as Z, c::*}, d}")
        self.assertEqual(
            got,
            [
                (("crate", "a", "X"), "X"),
                (("crate", "b"), "b"),
                (("crate", "b", "Y"), "Z"),
                (("crate", "b", "c"), "*"),
                (("crate", "d"), "d"),
            ],
        )

    def test_leading_colons_and_dollar_crate(self):
        self.assertEqual(self.parse("::std::fmt"), [(("std", "fmt"), "fmt")])
        self.assertEqual(self.parse("$crate::x::Y"), [(("$crate", "x", "Y"), "Y")])

    def test_line_of_each_leaf(self):
        lines = [l for _, _, l in cmc.parse_use_tree(cmc.tokenize("crate::{\n  a::X,\n  b::Y,\n}"))]
        self.assertEqual(lines, [2, 3])


class Graphs(CrateCase):
    def test_acyclic_crate(self):
        self.write("src/lib.rs", "mod a;\nmod b;\npub use a::run;\n")
        self.write("src/a.rs", "use crate::b::Thing;\npub fn run() { crate::b::helper(); }\n")
        self.write("src/b.rs", "pub struct Thing;\npub fn helper() {}\n")
        c = self.crate()
        self.assertEqual(
            self.edges(c), {("crate", "crate::a"), ("crate::a", "crate::b")}
        )
        self.assertEqual(c.cycles(), [])

    def test_sibling_cycle_through_inline_path(self):
        self.write("src/lib.rs", "mod a;\nmod b;\n")
        self.write("src/a.rs", "use crate::b::B;\npub struct A;\n")
        self.write("src/b.rs", "pub struct B;\nfn f() {\n    let _ = crate::a::A;\n}\n")
        c = self.crate()
        self.assertEqual(c.cycles(), [["crate::a", "crate::b"]])
        self.assertEqual(c.edges[("crate::b", "crate::a")], [(os.path.join(self.dir, "src/b.rs"), 3)])
        self.assertEqual(c.edges[("crate::a", "crate::b")], [(os.path.join(self.dir, "src/a.rs"), 1)])

    def test_parent_and_child_using_each_other_is_no_cycle(self):
        self.write("src/lib.rs", "mod p;\n")
        self.write("src/p/mod.rs", "mod child;\nmod sib;\npub use child::C;\npub struct P;\n")
        self.write("src/p/child.rs", "use super::P;\npub struct C;\n")
        self.write("src/p/sib.rs", "use super::child::C;\n")
        c = self.crate()
        # A module and its descendants are one unit: no cycle.
        self.assertEqual(c.cycles(), [])
        self.assertIn(("crate::p::child", "crate::p"), c.edges)
        # super::child::C names the sibling, not the parent
        self.assertIn(("crate::p::sib", "crate::p::child"), c.edges)
        self.assertNotIn(("crate::p::sib", "crate::p"), c.edges)

    def test_subtrees_using_each_other_is_a_cycle_between_siblings(self):
        self.write("src/lib.rs", "mod a;\nmod b;\n")
        self.write("src/a/mod.rs", "mod x;\n")
        self.write("src/a/x.rs", "use crate::b::y::Y;\npub struct X;\n")
        self.write("src/b/mod.rs", "pub mod y;\nuse crate::a::x::X;\n")
        self.write("src/b/y.rs", "pub struct Y;\n")
        c = self.crate()
        self.assertEqual(c.cycles(), [["crate::a", "crate::b"]])
        self.assertIn(("crate::a", "crate::b"), c.lifted())

    def test_child_only_using_parent_is_no_cycle(self):
        self.write("src/lib.rs", "mod p;\n")
        self.write("src/p.rs", "mod child;\npub struct P;\n")
        self.write("src/p/child.rs", "fn f(_: super::P) {}\nfn g() { super::super::p::P; }\n")
        c = self.crate()
        self.assertEqual(self.edges(c), {("crate::p::child", "crate::p")})
        self.assertEqual(c.cycles(), [])

    def test_test_modules_and_items_are_left_out(self):
        self.write("src/lib.rs", "mod a;\nmod b;\n")
        self.write(
            "src/a.rs",
            """\
            use crate::b::B;
            #[cfg(test)]
            use crate::b::helper;
            #[cfg(test)]
            fn only_in_tests() { crate::b::helper(); }
            #[cfg(test)]
            mod tests {
                use super::*;
                #[test]
                fn t() { crate::b::helper(); }
            }
            #[cfg(test)]
            mod file_tests;
            """,
        )
        self.write("src/a/file_tests.rs", "use crate::b;\n")
        self.write(
            "src/b.rs",
            """\
            pub struct B;
            pub fn helper() {}
            #[cfg(all(test, unix))]
            mod tests { use crate::a::*; }
            """,
        )
        c = self.crate()
        self.assertEqual(self.edges(c), {("crate::a", "crate::b")})
        names = {m.name() for m in c.modules}
        self.assertEqual(names, {"crate", "crate::a", "crate::b"})
        with_tests = self.crate(cfg_test=True)
        self.assertIn("crate::a::tests", {m.name() for m in with_tests.modules})
        self.assertIn(("crate::a::tests", "crate::a"), with_tests.edges)
        self.assertIn(("crate::b::tests", "crate::a"), with_tests.edges)
        self.assertIn(("crate::a::file_tests", "crate::b"), with_tests.edges)

    def test_cfg_test_on_a_field_does_not_swallow_the_rest(self):
        self.write("src/lib.rs", "mod a;\nmod b;\n")
        self.write(
            "src/a.rs",
            "pub struct S {\n    #[cfg(test)]\n    x: u8,\n    y: crate::b::B,\n}\n",
        )
        self.write("src/b.rs", "pub struct B;\n")
        self.assertEqual(self.edges(self.crate()), {("crate::a", "crate::b")})

    def test_bare_child_names_aliases_and_module_imports(self):
        self.write("src/main.rs", "mod cli;\nmod run;\nfn main() { run::go(cli::parse()); }\n")
        self.write("src/cli.rs", "pub fn parse() {}\n")
        self.write(
            "src/run/mod.rs",
            "mod inner;\nuse crate::cli as c;\npub fn go(_: ()) { c::parse(); inner::x(); }\n",
        )
        self.write("src/run/inner.rs", "pub fn x() {}\n")
        c = self.crate("src/main.rs")
        self.assertEqual(
            self.edges(c),
            {
                ("crate", "crate::run"),
                ("crate", "crate::cli"),
                ("crate::run", "crate::cli"),
                ("crate::run", "crate::run::inner"),
            },
        )

    def test_module_import_then_deeper_path(self):
        self.write("src/lib.rs", "mod a;\nmod b;\n")
        self.write("src/a.rs", "use crate::b;\nfn f() { b::deep::g(); }\n")
        self.write("src/b.rs", "pub mod deep { pub fn g() {} }\n")
        c = self.crate()
        self.assertIn(("crate::a", "crate::b::deep"), c.edges)

    def test_inline_modules_are_modules(self):
        self.write(
            "src/lib.rs",
            """\
            mod outer {
                pub mod x { pub fn f() { super::y::g(); } }
                pub mod y { pub fn g() { crate::outer::x::f(); } }
            }
            """,
        )
        c = self.crate()
        self.assertEqual(c.cycles(), [["crate::outer::x", "crate::outer::y"]])
        self.assertEqual(c.edges[("crate::outer::x", "crate::outer::y")][0][1], 2)

    def test_file_module_inside_inline_module(self):
        self.write("src/lib.rs", "mod outer {\n    pub mod leaf;\n}\n")
        self.write("src/outer/leaf.rs", "pub fn f() {}\n")
        self.assertIn("crate::outer::leaf", {m.name() for m in self.crate().modules})

    def test_path_attribute(self):
        self.write("src/lib.rs", '#[path = "elsewhere/impl_unix.rs"]\nmod sys;\nuse sys::f;\n')
        self.write("src/elsewhere/impl_unix.rs", "pub fn f() {}\n")
        c = self.crate()
        self.assertEqual(self.edges(c), {("crate", "crate::sys")})
        self.assertEqual(c.warnings, [])

    def test_missing_module_file_is_a_warning(self):
        self.write("src/lib.rs", "mod gone;\n")
        c = self.crate()
        self.assertEqual(len(c.warnings), 1)
        self.assertIn("gone", c.warnings[0])

    def test_not_uses(self):
        self.write("src/lib.rs", "mod a;\nmod b;\n")
        self.write(
            "src/a.rs",
            """\
            //! See [`crate::b`].
            pub(in crate::b) struct A;
            pub(crate) fn f() -> String { format!("crate::b::{}", 1) }
            macro_rules! m { () => { $crate::b::B } }
            #[doc = "crate::b"]
            fn g(x: X) { x.b::<u8>(); }
            """,
        )
        self.write("src/b.rs", "pub(crate) use crate::a::A;\n")
        c = self.crate()
        self.assertEqual(self.edges(c), {("crate::b", "crate::a")})

    def test_reexports_go_to_the_reexporting_module_unless_followed(self):
        # The root re-exports from `a` and `util`; `a` names `crate::helper`.
        self.write("src/lib.rs", "mod a;\nmod util;\npub use a::A;\npub use util::helper;\n")
        self.write("src/a.rs", "use crate::helper;\npub struct A;\n")
        self.write("src/util.rs", "pub fn helper() {}\n")
        c = self.crate()
        self.assertIn(("crate::a", "crate"), c.edges)
        # The root contains `a`: an edge up, not a cycle.
        self.assertEqual(c.cycles(), [])
        followed = self.crate(follow_reexports=True)
        self.assertIn(("crate::a", "crate::util"), followed.edges)
        self.assertNotIn(("crate::a", "crate"), followed.edges)
        self.assertEqual(followed.cycles(), [])

    def test_module_reexported_under_another_name(self):
        self.write("src/lib.rs", "mod a;\nmod b;\npub use self::b as bee;\n")
        self.write("src/a.rs", "fn f() { crate::bee::g(); }\n")
        self.write("src/b.rs", "pub fn g() {}\n")
        self.assertIn(("crate::a", "crate::b"), self.crate().edges)

    def test_glob_import_is_an_edge_to_the_glob_module(self):
        self.write("src/lib.rs", "mod a;\nmod b;\n")
        self.write("src/a.rs", "use crate::b::*;\n")
        self.write("src/b.rs", "use super::a::*;\n")
        self.assertEqual(self.crate().cycles(), [["crate::a", "crate::b"]])


class Tarjan(unittest.TestCase):
    def test_components(self):
        succ = {"a": ["b"], "b": ["c"], "c": ["a", "d"], "d": ["e"], "e": ["d"], "f": ["f"]}
        comps = sorted(sorted(c) for c in cmc.tarjan(sorted(succ), succ))
        self.assertEqual(comps, [["a", "b", "c"], ["d", "e"], ["f"]])

    def test_deep_chain_does_not_recurse(self):
        n = 5000
        succ = {i: [i + 1] for i in range(n)}
        succ[n] = [0]
        comps = cmc.tarjan(list(range(n + 1)), succ)
        self.assertEqual([len(c) for c in comps], [n + 1])


class CommandLine(CrateCase):
    def cyclic(self):
        self.write("src/lib.rs", "mod a;\nmod b;\nmod c;\n")
        self.write("src/a.rs", "use crate::b::B;\npub struct A;\n")
        self.write("src/b.rs", "use crate::a::A;\npub struct B;\n")
        self.write("src/c.rs", "pub struct C;\n")

    def test_clean_workspace_member_passes(self):
        self.write("src/lib.rs", "mod a;\n")
        self.write("src/a.rs", "pub fn f() {}\n")
        self.write("src/main.rs", "fn main() { demo::f(); }\n")
        self.write("src/bin/tool.rs", "mod x;\nfn main() {}\n")
        self.write("src/bin/x.rs", "")
        self.write("tests/it.rs", "#[test] fn t() {}\n")
        rc, out = self.run_main("--allow", "")
        self.assertEqual(rc, 0, out)
        self.assertIn("5 crate targets", out)  # lib, main, bins tool and x, test it
        self.assertNotIn("module cycle", out)

    def test_cycle_fails_with_evidence(self):
        self.cyclic()
        rc, out = self.run_main("--allow", "")
        self.assertEqual(rc, 1)
        self.assertIn("error: module cycle in src/lib.rs (demo lib), 2 modules:", out)
        self.assertIn("crate::a -> crate::b  at src/a.rs:1", out)
        self.assertIn("crate::b -> crate::a  at src/b.rs:1", out)

    def test_allow_list_turns_a_listed_cycle_into_a_warning(self):
        self.cyclic()
        allow = self.write("allowed.txt", "# lead: cut these\nsrc/lib.rs: crate::a crate::b crate::c\n")
        rc, out = self.run_main("--allow", allow)
        self.assertEqual(rc, 0, out)
        self.assertIn("warning: allowed module cycle in src/lib.rs", out)
        # by package name: covers the lib and any bin holding the same modules
        allow = self.write("allowed.txt", "demo: crate::a crate::b\n")
        rc, out = self.run_main("--allow", allow)
        self.assertEqual(rc, 0, out)
        self.assertIn("warning: allowed module cycle in src/lib.rs", out)

    def test_allow_list_does_not_cover_a_grown_cycle_or_another_crate(self):
        self.cyclic()
        self.write("src/c.rs", "pub struct C;\nfn f() { crate::a::A; }\n")
        self.write("src/a.rs", "use crate::b::B;\npub struct A;\nfn g() { crate::c::C; }\n")
        allow = self.write("allowed.txt", "demo: crate::a crate::b\nsrc/main.rs: crate::a crate::b crate::c\n")
        rc, out = self.run_main("--allow", allow)
        self.assertEqual(rc, 1)
        self.assertIn("error: module cycle in src/lib.rs (demo lib), 3 modules:", out)
        self.assertIn("note: allow-list line 1", out)
        self.assertIn("note: allow-list line 2", out)

    def test_stale_allow_entry_is_reported_but_passes(self):
        self.write("src/lib.rs", "mod a;\n")
        self.write("src/a.rs", "")
        allow = self.write("allowed.txt", "src/lib.rs: crate::a crate::b\n")
        rc, out = self.run_main("--allow", allow)
        self.assertEqual(rc, 0)
        self.assertIn("matches no cycle now", out)

    def test_allow_list_entries_may_span_lines_and_are_printed(self):
        self.cyclic()
        rc, printed = self.run_main("--allow", "", "--print-allow")
        self.assertEqual(rc, 0)
        self.assertEqual(printed, "demo:  # src/lib.rs, 2 modules\n    crate::a\n    crate::b\n")
        allow = self.write("allowed.txt", "# comment\n" + printed)
        rc, out = self.run_main("--allow", allow)
        self.assertEqual(rc, 0, out)
        self.assertIn("warning: allowed module cycle", out)

    def test_bad_allow_line(self):
        allow = self.write("allowed.txt", "crate::a crate::b\n")
        self.write("src/lib.rs", "")
        with self.assertRaises(SystemExit):
            self.run_main("--allow", allow)


if __name__ == "__main__":
    unittest.main()
