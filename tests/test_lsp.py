"""`fpol lsp` end to end: a real LSP client (pytest-lsp) drives the server over stdio.

initialize, open a broken policy and get each diagnostic (code, range, severity, hint) as
`fpol check` reports it, change the text and get them refreshed (warnings too), hover on a
rule, an op, a group and an errno, complete ops, errnos and header values, format, apply
the did-you-mean quick fixes, shut down. Position conversions (UTF-16 in LSP, code points
in the compiler) are checked on a line with characters outside the BMP.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

pytest.importorskip("pygls", reason="pygls is not installed (pip install fpol[lsp])")
pytest_lsp = pytest.importorskip("pytest_lsp", reason="pytest-lsp is not installed (fpol[test])")

from lsprotocol import types as t  # noqa: E402
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities  # noqa: E402

from fpol.compiler.driver import check  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

BROKEN = """\
policy demo
abi v5
deny wirte under /secret with EPRM
dny read under /x
redirect read to userspace befor under /keys
"""


@pytest_lsp.fixture(config=ClientServerConfig(server_command=[sys.executable, "-m", "fpol", "lsp"],
                                              server_env=None))
async def client(lsp_client: LanguageClient):
    await lsp_client.initialize_session(t.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"), root_uri=ROOT.as_uri()))
    yield
    await lsp_client.shutdown_session()


async def _open(client: LanguageClient, path: Path, text: str, version: int = 1) -> str:
    uri = path.as_uri()
    client.text_document_did_open(t.DidOpenTextDocumentParams(
        text_document=t.TextDocumentItem(uri=uri, language_id="fpol", version=version, text=text)))
    await client.wait_for_notification(t.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    return uri


def _expected(text: str, path: Path) -> list[tuple]:
    """What `fpol check` says, as (code, 0-based range, severity, message with hint)."""
    out = []
    for d in check(text, str(path)).diagnostics:
        sp = d.span
        out.append((d.code, (sp.line - 1, sp.column - 1, sp.end_line - 1, sp.end_column - 1),
                    "error" if d.is_error else "warning",
                    d.message + (f"\n= hint: {d.hint}" if d.hint else "")))
    return out


def _got(client: LanguageClient, uri: str) -> list[tuple]:
    sev = {t.DiagnosticSeverity.Error: "error", t.DiagnosticSeverity.Warning: "warning"}
    return [(d.code, (d.range.start.line, d.range.start.character, d.range.end.line,
                      d.range.end.character), sev[d.severity], d.message)
            for d in client.diagnostics[uri]]


@pytest.mark.asyncio
async def test_session_diagnostics_hover_completion_format_fixes(client: LanguageClient, tmp_path):
    path = tmp_path / "broken.fpol"
    uri = await _open(client, path, BROKEN)

    # Each diagnostic at the range `fpol check` gives, with its code, severity and hint.
    got = _got(client, uri)
    assert got == _expected(BROKEN, path)
    by_code = {}
    for code, rng, sev, msg in got:
        by_code.setdefault(code, []).append((rng, msg))
    assert [r for r, _ in by_code["FP005"]] == [(1, 4, 1, 6)]  # `v5`
    assert [r for r, _ in by_code["FP003"]] == [(2, 5, 2, 10)]  # `wirte`
    assert [r for r, _ in by_code["FP004"]] == [(2, 30, 2, 34)]  # `EPRM`
    assert sorted(r for r, _ in by_code["FP001"]) == [(3, 0, 3, 3), (4, 27, 4, 32)]
    assert "did you mean `write`?" in by_code["FP003"][0][1]
    assert all(d.source == "fpol" for d in client.diagnostics[uri])

    # Quick fixes: every did-you-mean hint in the range becomes an edit.
    actions = await client.text_document_code_action_async(t.CodeActionParams(
        text_document=t.TextDocumentIdentifier(uri=uri),
        range=t.Range(start=t.Position(line=0, character=0), end=t.Position(line=5, character=0)),
        context=t.CodeActionContext(diagnostics=client.diagnostics[uri])))
    fixes = {a.title: a.edit.changes[uri][0] for a in actions}
    assert all(a.kind == t.CodeActionKind.QuickFix for a in actions)
    replaced = sorted((e.range.start.line, e.range.start.character, e.new_text)
                      for e in fixes.values())
    assert replaced == [(2, 5, "write"), (2, 30, "EPERM"), (3, 0, "deny"), (4, 27, "before")]
    fixed = _apply(BROKEN, list(fixes.values())).replace("abi v5", "abi v4")
    assert "deny write under /secret with EPERM" in fixed

    # Refreshed on change: the fixed text has no errors, and its warnings are reported.
    changed = fixed + "allow read under /x\n"
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=2),
        content_changes=[t.TextDocumentContentChangeWholeDocument(text=changed)]))
    await client.wait_for_notification(t.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    got = _got(client, uri)
    assert got == _expected(changed, path)
    assert got and all(sev == "warning" for _, _, sev, _ in got)
    assert "FP102" in {code for code, *_ in got}  # allow under default allow

    # Hover: a rule (ops expanded, classes, example paths), an op group, an op, an errno.
    async def hover(line, ch):
        h = await client.text_document_hover_async(t.HoverParams(
            text_document=t.TextDocumentIdentifier(uri=uri),
            position=t.Position(line=line, character=ch)))
        return h.contents.value if h else None

    rule = await hover(2, 1)
    assert "deny write under /secret with EPERM" in rule
    assert "`write` = setattr, access, open, create" in rule
    assert "decides** in" in rule and "e.g. `/secret`" in rule
    group = await hover(2, 7)
    assert group.startswith("**write** — op group") and "`unlink`" in group
    op = await hover(4, 10)  # `read` in the redirect rule
    assert "**read** — op group" in op
    err = await hover(2, 32)
    assert err.startswith("**EPERM** = 1: Operation not permitted")

    # Completion: ops after an action, errnos after `with`, header values, keywords.
    async def complete(line, ch):
        r = await client.text_document_completion_async(t.CompletionParams(
            text_document=t.TextDocumentIdentifier(uri=uri),
            position=t.Position(line=line, character=ch)))
        return [i.label for i in r.items]

    assert {"write", "read", "all", "unlink", "copy_file_range"} <= set(await complete(2, 5))
    assert (await complete(2, 30))[:3] == ["EACCES", "EPERM", "EROFS"]
    assert await complete(1, 4) == ["v4", "v3"]
    assert {"deny", "allow", "policy", "default"} <= set(await complete(5, 0))

    # Formatting through fmt: one edit, the canonical text.
    messy = "deny   write,read under /a//b   with EPERM\n"
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=3),
        content_changes=[t.TextDocumentContentChangeWholeDocument(text=messy)]))
    await client.wait_for_notification(t.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)
    edits = await client.text_document_formatting_async(t.DocumentFormattingParams(
        text_document=t.TextDocumentIdentifier(uri=uri),
        options=t.FormattingOptions(tab_size=4, insert_spaces=True)))
    assert _apply(messy, edits) == "deny read, write under /a/b with EPERM\n"


@pytest.mark.asyncio
async def test_ranges_count_utf16_units(client: LanguageClient, tmp_path):
    # `😀` is two UTF-16 units: the range of `wirte` after it moves by one more.
    text = 'deny read under "/😀" named "😀" \\\n    with EPRM\ndeny wirte under "/😀"\n'
    uri = await _open(client, tmp_path / "wide.fpol", text)
    ranges = {d.code: d.range for d in client.diagnostics[uri]}
    assert (ranges["FP004"].start.line, ranges["FP004"].start.character) == (1, 9)
    assert (ranges["FP003"].start.line, ranges["FP003"].start.character) == (2, 5)
    # Six wide characters before `EPERM`: read as code points, its UTF-16 start would land
    # past its end.
    line = 'deny read under "/😀😀😀😀😀😀" with EPERM'
    uri = await _open(client, tmp_path / "wide2.fpol", line + "\n", version=1)
    start = len(line[:line.index("EPERM")].encode("utf-16-le")) // 2
    h = await client.text_document_hover_async(t.HoverParams(
        text_document=t.TextDocumentIdentifier(uri=uri),
        position=t.Position(line=0, character=start)))
    assert h.contents.value.startswith("**EPERM** = 1")


@pytest.mark.asyncio
async def test_edits_while_checking_end_in_the_last_texts_diagnostics(client: LanguageClient,
                                                                      tmp_path):
    """Checks run off the server's loop and coalesce: after a burst of edits the diagnostics
    are those of the last text, published with its version."""
    path = tmp_path / "burst.fpol"
    uri = await _open(client, path, "deny read under /a\n")
    texts = [f"deny {'wirte' if n % 2 else 'write'} under /a{n}\n" for n in range(2, 12)]
    texts[-1] = "deny wirte under /last with EPRM\n"
    for version, text in enumerate(texts, start=2):
        client.text_document_did_change(t.DidChangeTextDocumentParams(
            text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[t.TextDocumentContentChangeWholeDocument(text=text)]))
    last = len(texts) + 1
    async def settled():  # only the last text has FP004: no earlier publication matches
        while _got(client, uri) != _expected(texts[-1], path):
            await client.wait_for_notification(t.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)

    await asyncio.wait_for(settled(), timeout=30)
    assert _got(client, uri) == _expected(texts[-1], path)
    assert [c for c, *_ in _got(client, uri)] == ["FP003", "FP004"]
    # Hover right after an edit answers for the new text.
    client.text_document_did_change(t.DidChangeTextDocumentParams(
        text_document=t.VersionedTextDocumentIdentifier(uri=uri, version=last + 1),
        content_changes=[t.TextDocumentContentChangeWholeDocument(
            text="audit write under /x with EPERM\n")]))
    h = await client.text_document_hover_async(t.HoverParams(
        text_document=t.TextDocumentIdentifier(uri=uri), position=t.Position(line=0, character=1)))
    assert "audit write under /x" in h.contents.value


@pytest.mark.asyncio
async def test_go_to_definition_of_includes_and_defined_names(client: LanguageClient, tmp_path):
    (tmp_path / "common").mkdir()
    common = tmp_path / "common" / "creds.fpol"
    common.write_text("# shared names\ndefine CREDS = /home/*/.aws\n")
    text = ('include "common/creds.fpol"\n'
            "define KEYS = /secret/keys, /vault\n"
            "deny read under $KEYS/x\n"
            'audit read matching "$CREDS/**"\n')
    uri = await _open(client, tmp_path / "main.fpol", text)

    async def go(line, ch):
        r = await client.text_document_definition_async(t.DefinitionParams(
            text_document=t.TextDocumentIdentifier(uri=uri),
            position=t.Position(line=line, character=ch)))
        if r is None:
            return None
        loc = r[0] if isinstance(r, list) else r
        return (loc.uri, loc.range.start.line, loc.range.start.character, loc.range.end.character)

    assert await go(0, 12) == (common.as_uri(), 0, 0, 0)  # the include's path
    assert await go(2, 18) == (uri, 1, 7, 11)  # $KEYS -> `define KEYS`
    assert await go(3, 23) == (common.as_uri(), 1, 7, 12)  # $CREDS, defined in the include
    assert await go(2, 1) is None  # `deny` has no definition

    async def hover(line, ch):
        h = await client.text_document_hover_async(t.HoverParams(
            text_document=t.TextDocumentIdentifier(uri=uri),
            position=t.Position(line=line, character=ch)))
        return h.contents.value if h else None

    assert "define KEYS = /secret/keys, /vault" in await hover(2, 18)
    creds = await hover(3, 23)
    assert "define CREDS = /home/*/.aws" in creds and "in `common/creds.fpol`" in creds
    assert (await hover(0, 2)).startswith("**include**")


@pytest.mark.asyncio
async def test_problem_in_an_included_file_shows_on_the_include_line(client: LanguageClient,
                                                                     tmp_path):
    (tmp_path / "bad.fpol").write_text("deny wirte under /x\n")
    uri = await _open(client, tmp_path / "main.fpol", 'policy m\ninclude "bad.fpol"\n')
    [d] = client.diagnostics[uri]
    assert d.code == "FP003" and d.message.startswith("bad.fpol:1:6: unknown operation")
    assert (d.range.start.line, d.range.start.character, d.range.end.line,
            d.range.end.character) == (1, 0, 1, 18)
    # Its did-you-mean is for the other file's text: no quick fix here.
    actions = await client.text_document_code_action_async(t.CodeActionParams(
        text_document=t.TextDocumentIdentifier(uri=uri), range=d.range,
        context=t.CodeActionContext(diagnostics=[d])))
    assert not actions


@pytest.mark.asyncio
async def test_examples_open_clean_and_format_to_themselves(client: LanguageClient):
    for path in sorted((ROOT / "examples").glob("*.fpol")):
        text = path.read_text()
        uri = await _open(client, path, text)
        assert _got(client, uri) == _expected(text, path)
        edits = await client.text_document_formatting_async(t.DocumentFormattingParams(
            text_document=t.TextDocumentIdentifier(uri=uri),
            options=t.FormattingOptions(tab_size=4, insert_spaces=True)))
        assert not edits, path.name  # the examples are in canonical form


def _apply(text: str, edits) -> str:
    lines = text.split("\n")

    def offset(p):
        units = lines[p.line].encode("utf-16-le")[:2 * p.character].decode("utf-16-le")
        return sum(len(l) + 1 for l in lines[:p.line]) + len(units)

    for e in sorted(edits, key=lambda e: (e.range.start.line, e.range.start.character),
                    reverse=True):
        a, b = offset(e.range.start), offset(e.range.end)
        text = text[:a] + e.new_text + text[b:]
    return text
