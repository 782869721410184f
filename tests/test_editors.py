"""Editor support under editors/: the TextMate grammar (VS Code extension) and the Vim syntax.

- editors/tests/*.test.fpol hold every form of the language with scope assertions; they run
  through vscode-tmgrammar-test (npm, installed by scripts/install-editor-deps), and the same
  assertions are checked in a real Vim (syntax groups at each asserted column).
- Every example (examples/**/*.fpol) gets assertions made from the compiler's own parse:
  each action, op, group, errno, scope keyword, path, header, comment must carry the scope
  of its kind, in the TextMate grammar and in Vim alike.
- The op and group names of both grammars are the compiler's table; the extension manifest
  points at files that exist and starts `fpol lsp`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fpol.compiler import ast, ops
from fpol.compiler.parser import parse

ROOT = Path(__file__).resolve().parent.parent
EDITORS = ROOT / "editors"
VSCODE = EDITORS / "vscode"
GRAMMAR = VSCODE / "syntaxes" / "fpol.tmLanguage.json"
VIM = EDITORS / "vim"
FORMS = sorted((EDITORS / "tests").glob("*.test.fpol"))
EXAMPLES = sorted((ROOT / "examples").rglob("*.fpol"))
TOOL = VSCODE / "node_modules" / ".bin" / "vscode-tmgrammar-test"

# TextMate scope -> Vim syntax group (editors/vim/syntax/fpol.vim).
VIM_GROUPS = {
    "keyword.other.header.fpol": "fpolHeader",
    "entity.name.type.policy.fpol": "fpolPolicyName",
    "constant.language.header-value.fpol": "fpolHeaderValue",
    "keyword.other.default.fpol": "fpolDefault",
    "keyword.other.include.fpol": "fpolInclude",
    "keyword.other.define.fpol": "fpolDefine",
    "entity.name.variable.fpol": "fpolDefName",
    "keyword.operator.assignment.fpol": "fpolAssign",
    "keyword.control.action.fpol": "fpolAction",
    "keyword.other.target.fpol": "fpolTarget",
    "keyword.other.scope.fpol": "fpolScope",
    "keyword.other.except.fpol": "fpolExcept",
    "keyword.other.with.fpol": "fpolWith",
    "keyword.other.subject.fpol": "fpolSubject",
    "support.type.group.fpol": "fpolGroup",
    "support.function.op.fpol": "fpolOp",
    "constant.language.errno.fpol": "fpolErrno",
    "string.unquoted.path.fpol": "fpolPath",
    "variable.other.fpol": "fpolVariable",
    "string.quoted.double.fpol": ("fpolString", "fpolGlobString"),
    "punctuation.definition.string.begin.fpol": ("fpolString", "fpolGlobString"),
    "punctuation.definition.string.end.fpol": ("fpolString", "fpolGlobString"),
    "keyword.operator.glob.fpol": "fpolGlob",
    "constant.character.escape.fpol": "fpolEscape",
    "invalid.illegal.escape.fpol": "fpolBadEscape",
    "constant.character.escape.line-continuation.fpol": "fpolContinuation",
    "comment.line.number-sign.fpol": "fpolComment",
    "punctuation.separator.comma.fpol": "fpolComma",
}


# --- expectations ------------------------------------------------------------------------------

def _forms_assertions(path: Path) -> tuple[list[str], list[tuple[int, int, int, str]]]:
    """The source lines of a .test.fpol file (assertion lines dropped) and its assertions
    as (0-based line, column, length, scope)."""
    source: list[str] = []
    marks: list[tuple[int, int, int, str]] = []
    for i, line in enumerate(path.read_text().splitlines()):
        if i == 0:
            continue  # the SYNTAX TEST header
        m = re.match(r"#( *)(\^+) (\S+)$", line) or re.match(r"# (<)(-+) (\S+)$", line)
        if m and source:
            col = 0 if m.group(1) == "<" else len(m.group(1)) + 1
            marks.append((len(source) - 1, col, len(m.group(2)), m.group(3)))
        else:
            source.append(line)
    return source, marks


def _word_before(text: str, word: str, limit: int, start: int = 0) -> int:
    """Column of the last whole `word` in text[start:limit]."""
    for m in reversed(list(re.finditer(rf"(?<![\w.$/-]){re.escape(word)}(?![\w.-])",
                                       text[start:limit]))):
        return start + m.start()
    raise AssertionError(f"no `{word}` before column {limit} in {text!r}")


def _example_marks(path: Path) -> list[tuple[int, int, int, str]]:
    """Scope expectations for every token the compiler parsed, in 0-based lines/columns."""
    data = path.read_bytes()
    tree, source, reporter = parse(data, str(path))
    assert not reporter.has_errors, [d.render() for d in reporter.items]
    lines = source.lines
    marks: list[tuple[int, int, int, str]] = []

    def word(w: ast.Word, scope: str) -> None:
        assert w.span.line == w.span.end_line
        marks.append((w.span.line - 1, w.span.column - 1, len(w.text), scope))

    def keyword_at(line: int, col: int, text: str, scope: str) -> None:
        assert lines[line][col:col + len(text)] == text, (lines[line], col, text)
        marks.append((line, col, len(text), scope))

    def path_lit(p: ast.PathLit) -> None:
        line, col = p.span.line - 1, p.span.column - 1
        if p.quoted:
            marks.append((line, col, 1, "punctuation.definition.string.begin.fpol"))
            marks.append((line, col + len(p.raw) - 1, 1, "punctuation.definition.string.end.fpol"))
            marks.append((line, col, len(p.raw), "string.quoted.double.fpol"))
        elif p.raw.startswith("$"):
            name = re.match(r"\$[A-Za-z_][A-Za-z0-9_]*", p.raw).group(0)
            marks.append((line, col, len(name), "variable.other.fpol"))
            marks.append((line, col, len(p.raw), "string.unquoted.path.fpol"))
        else:
            marks.append((line, col, len(p.raw), "string.unquoted.path.fpol"))

    def scope(s: ast.Scope) -> None:
        keyword_at(s.span.line - 1, s.span.column - 1, s.kind, "keyword.other.scope.fpol")
        path_lit(s.path)

    def first_word(st, text: str, scope_name: str) -> None:
        keyword_at(st.span.line - 1, st.span.column - 1, text, scope_name)

    for st in tree.statements:
        kind = type(st).__name__
        if isinstance(st, ast.Header):
            first_word(st, st.keyword, "keyword.other.header.fpol")
            word(st.value, "entity.name.type.policy.fpol" if st.keyword == "policy"
                 else "constant.language.header-value.fpol")
        elif isinstance(st, ast.Default):
            first_word(st, "default", "keyword.other.default.fpol")
            word(st.action, "keyword.control.action.fpol")
            if st.errno is not None:
                word(st.errno, "constant.language.errno.fpol")
        elif isinstance(st, ast.Rule):
            word(st.action, "keyword.control.action.fpol")
            for w in st.ops:
                word(w, "support.type.group.fpol" if w.text in ops.GROUPS
                     else "support.function.op.fpol")
            if st.target is not None:
                keyword_at(st.target.span.line - 1, st.target.span.column - 1, "to",
                           "keyword.other.target.fpol")
            for s in st.scopes:
                scope(s)
            for clause in st.excepts:
                first = clause[0]
                line = first.span.line - 1
                col = _word_before(lines[line], "except", first.span.column - 1)
                keyword_at(line, col, "except", "keyword.other.except.fpol")
                for s in clause:
                    scope(s)
            for by in st.subjects:  # LANGUAGE.md §6: `by` and each subject's kind
                keyword_at(by.span.line - 1, by.span.column - 1, "by", "keyword.other.subject.fpol")
            for item in [i for by in st.subjects for i in by.items] + list(st.except_subjects):
                line, col = item.span.line - 1, item.span.column - 1
                keyword_at(line, col, item.kind, "keyword.other.subject.fpol")
                if item in st.except_subjects and re.search(r"(?<![\w.$/-])by\s+$", lines[line][:col]):
                    keyword_at(line, _word_before(lines[line], "by", col), "by",
                               "keyword.other.subject.fpol")
                if item in st.except_subjects and item is st.except_subjects[0] and not st.excepts:
                    keyword_at(line, _word_before(lines[line], "except", col), "except",
                               "keyword.other.except.fpol")
            for e in st.errnos:
                line = e.span.line - 1
                keyword_at(line, _word_before(lines[line], "with", e.span.column - 1), "with",
                           "keyword.other.with.fpol")
                word(e, "constant.language.errno.fpol")
        elif kind == "Include":
            first_word(st, "include", "keyword.other.include.fpol")
            path_lit(st.path)
        elif kind == "Define":
            first_word(st, "define", "keyword.other.define.fpol")
            word(st.name, "entity.name.variable.fpol")
            for p in getattr(st, "paths", getattr(st, "values", ())):
                path_lit(p)
        else:
            raise AssertionError(f"{path}: statement {kind} has no highlighting expectations "
                                 "(add it to tests/test_editors.py)")
    for c in tree.comments:
        marks.append((c.line - 1, c.column - 1, len(c.text), "comment.line.number-sign.fpol"))
    return marks


def _syntax_test(lines: list[str], marks, title: str) -> str:
    """A vscode-tmgrammar-test file: each source line followed by its assertion lines."""
    out = [f'# SYNTAX TEST "source.fpol" "{title}"']
    by_line: dict[int, list] = {}
    for line, col, n, scope in marks:
        by_line.setdefault(line, []).append((col, n, scope))
    for i, text in enumerate(lines):
        assert not re.match(r"\s*#\s*(\^|<-)", text), f"line looks like an assertion: {text!r}"
        out.append(text)
        for col, n, scope in sorted(by_line.get(i, ())):
            out.append(f"# <{'-' * n} {scope}" if col == 0 else f"#{' ' * (col - 1)}{'^' * n} {scope}")
    return "\n".join(out) + "\n"


# --- the TextMate grammar ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def tmgrammar_test() -> Path:
    if not TOOL.exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed, so vscode-tmgrammar-test cannot be installed "
                        "(scripts/install-editor-deps)")
        subprocess.run([str(ROOT / "scripts" / "install-editor-deps")], check=True, timeout=600)
    if shutil.which("node") is None:
        pytest.skip("node is not installed (vscode-tmgrammar-test runs on it)")
    assert TOOL.exists(), "scripts/install-editor-deps did not install vscode-tmgrammar-test"
    return TOOL


def _run_tool(tool: Path, files: list[Path]) -> None:
    r = subprocess.run([str(tool), "-g", str(GRAMMAR), *map(str, files)], capture_output=True,
                       text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert out.count("run successfuly") == len(files), out


def test_every_form_highlights_as_asserted(tmgrammar_test):
    assert FORMS
    for form in FORMS:  # the tool ignores marks past the end of a line: none may be there
        source, marks = _forms_assertions(form)
        assert marks
        for line, col, n, scope in marks:
            assert col + n <= len(source[line]), (form.name, source[line], col, n, scope)
    _run_tool(tmgrammar_test, FORMS)


def test_every_example_highlights_as_the_compiler_parses_it(tmgrammar_test, tmp_path):
    assert EXAMPLES
    files = []
    for path in EXAMPLES:
        marks = _example_marks(path)
        assert marks
        f = tmp_path / (path.relative_to(ROOT / "examples").as_posix().replace("/", "_")
                        + ".test.fpol")
        f.write_text(_syntax_test(path.read_text().split("\n"), marks, path.name))
        files.append(f)
    _run_tool(tmgrammar_test, files)


def test_grammar_test_catches_a_wrong_scope(tmgrammar_test, tmp_path):
    """The tool is live: a wrong expectation fails."""
    f = tmp_path / "wrong.test.fpol"
    f.write_text('# SYNTAX TEST "source.fpol" "wrong"\ndeny read\n#    ^^^^ support.function.op.fpol\n')
    r = subprocess.run([str(tmgrammar_test), "-g", str(GRAMMAR), str(f)], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode != 0 and "support.function.op.fpol" in r.stdout + r.stderr


def _grammar_words(pattern: str) -> list[str]:
    return re.search(r"\(([a-z_|]+)\)", pattern).group(1).split("|")


def test_grammar_names_are_the_compilers_table():
    g = json.loads(GRAMMAR.read_text())
    group_pat, op_pat = (p["match"] for p in g["repository"]["ops"]["patterns"])
    assert _grammar_words(group_pat) == list(ops.GROUPS)
    assert sorted(_grammar_words(op_pat)) == sorted(o for o in ops.SINGLE_OPS if o not in ops.GROUPS)
    vim = (VIM / "syntax" / "fpol.vim").read_text()
    assert re.search(r"syn keyword fpolGroup +(.*)", vim).group(1).split() == list(ops.GROUPS)
    assert sorted(re.search(r"syn keyword fpolOp +(.*)", vim).group(1).split()) == \
        sorted(o for o in ops.SINGLE_OPS if o not in ops.GROUPS)
    # Every keyword of the language has a scope in both grammars.
    from fpol.compiler.parser import keywords

    for kw in keywords():
        assert re.search(rf"(?<![a-z]){kw}(?![a-z])", json.dumps(g)), kw
        assert re.search(rf"(?<![a-z]){kw}(?![a-z])", vim), kw


def test_vscode_extension_is_wired_to_fpol_lsp():
    pkg = json.loads((VSCODE / "package.json").read_text())
    lang = pkg["contributes"]["languages"][0]
    assert lang["id"] == "fpol" and lang["extensions"] == [".fpol"]
    assert (VSCODE / lang["configuration"]).is_file()
    grammar = pkg["contributes"]["grammars"][0]
    assert grammar["scopeName"] == "source.fpol" and (VSCODE / grammar["path"]).resolve() == GRAMMAR
    assert json.loads(GRAMMAR.read_text())["scopeName"] == "source.fpol"
    conf = json.loads((VSCODE / "language-configuration.json").read_text())
    assert conf["comments"]["lineComment"] == "#"
    assert pkg["contributes"]["configuration"]["properties"]["fpol.command"]["default"] == \
        ["fpol", "lsp"]
    main = VSCODE / pkg["main"]
    js = main.read_text()
    assert "vscode-languageclient/node" in js and '"fpol.command"' not in js and \
        'get("command", ["fpol", "lsp"])' in js
    assert "vscode-languageclient" in pkg["dependencies"]
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed, so extension.js cannot be syntax-checked")
    r = subprocess.run([node, "--check", str(main)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


# --- Vim -----------------------------------------------------------------------------------------

_VIM_PROBE = r"""
set nocompatible
let &runtimepath = '{rtp},' . &runtimepath
filetype on
syntax on
let out = []
for item in readfile('{probes}')
  let [path, line, col] = split(item, "\t")
  if expand('%:p') !=# path
    execute 'edit ' . fnameescape(path)
  endif
  call add(out, &filetype . "\t" . synIDattr(synID(str2nr(line), str2nr(col), 1), 'name'))
endfor
call writefile(out, '{result}')
qall!
"""


def _vim_groups(tmp_path: Path, probes: list[tuple[Path, int, int]]) -> list[tuple[str, str]]:
    vim = shutil.which("vim")
    if vim is None:
        pytest.skip("vim is not installed (Debian package vim)")
    probe_file, result, script = tmp_path / "probes", tmp_path / "result", tmp_path / "probe.vim"
    probe_file.write_text("".join(f"{p}\t{line + 1}\t{col + 1}\n" for p, line, col in probes))
    script.write_text(_VIM_PROBE.format(rtp=VIM, probes=probe_file, result=result))
    r = subprocess.run([vim, "-N", "-u", "NONE", "-i", "NONE", "-n", "-Es", "-S", str(script)],
                       capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.exists(), r.stdout + r.stderr
    return [tuple(line.split("\t", 1)) for line in result.read_text().splitlines()]


def _check_vim(tmp_path: Path, cases: list[tuple[Path, list[tuple[int, int, int, str]]]]) -> None:
    probes, wanted = [], []
    for path, marks in cases:
        for line, col, n, scope in marks:
            if scope not in VIM_GROUPS:
                continue
            groups = VIM_GROUPS[scope]
            groups = groups if isinstance(groups, tuple) else (groups,)
            for c in sorted({col, col + n - 1}):  # the token's first and last character
                probes.append((path, line, c))
                wanted.append((path.name, line + 1, c + 1, scope, groups))
    got = _vim_groups(tmp_path, probes)
    assert len(got) == len(wanted)
    bad = [(w[:4], g) for w, g in zip(wanted, got) if g[0] != "fpol" or g[1] not in w[4]]
    assert not bad, bad[:20]


def test_vim_highlights_every_form(tmp_path):
    cases = []
    for form in FORMS:
        source, marks = _forms_assertions(form)
        f = tmp_path / (form.name.replace(".test", ""))
        f.write_text("\n".join(source) + "\n")
        cases.append((f, marks))
    _check_vim(tmp_path, cases)


def test_vim_highlights_every_example(tmp_path):
    _check_vim(tmp_path, [(path, _example_marks(path)) for path in EXAMPLES])


def test_vim_probe_is_live(tmp_path):
    """A file that is not .fpol gets no fpol groups (ftdetect matters), and a comment is no op."""
    f = tmp_path / "x.fpol"
    f.write_text("deny read  # read\n")
    other = tmp_path / "x.txt"
    other.write_text("deny read\n")
    got = _vim_groups(tmp_path, [(f, 0, 5), (f, 0, 14), (other, 0, 0)])
    assert got == [("fpol", "fpolGroup"), ("fpol", "fpolComment"), ("text", "")]
