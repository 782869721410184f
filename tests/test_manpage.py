"""docs/fpol.1 is generated from the argparse parser: this fails while it is out of date."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from fpol.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
MAN = ROOT / "docs" / "fpol.1"
REGENERATE = "scripts/gen-manpage"


def _without_date(text: str) -> str:
    # The .TH line carries the day it was generated; everything else must match.
    return re.sub(r'^(\.TH \S+ "\d+") "[^"]*"', r'\1 "DATE"', text, count=1, flags=re.M)


def test_manpage_is_up_to_date(tmp_path):
    out = tmp_path / "fpol.1"
    r = subprocess.run([str(ROOT / REGENERATE), str(out)], capture_output=True, text=True,
                       cwd=str(ROOT), timeout=300)
    assert r.returncode == 0, r.stderr
    fresh = _without_date(out.read_text())
    assert MAN.exists(), f"docs/fpol.1 is missing: run `{REGENERATE}` and commit it"
    assert _without_date(MAN.read_text()) == fresh, (
        f"docs/fpol.1 is out of date with fpol's command line: run `{REGENERATE}` "
        "and commit docs/fpol.1")


def test_manpage_documents_every_command_and_option():
    text = MAN.read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert f"fpol {name}" in text.replace("\\fR \\fI\\,", " "), name
        for action in p._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help"):
                    assert opt.replace("-", "\\-") in text, (name, opt)
    assert ".SH EXIT STATUS" in text and ".SH SEE ALSO" in text


def test_manpage_renders_without_warnings():
    groff = shutil.which("groff")
    if groff is None:
        pytest.skip("groff is not installed (Debian package groff-base)")
    r = subprocess.run([groff, "-man", "-Tutf8", "-ww", str(MAN)], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    assert "fpol - compile, check" in re.sub(r".\x08", "", r.stdout)
