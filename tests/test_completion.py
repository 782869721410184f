"""`fpol completion bash|zsh|fish`: scripts generated from the parser complete what it knows.

bash is driven for real (the completion function called as bash calls it); zsh and fish are
checked with their own syntax checkers where those shells are installed.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fpol.cli import build_parser, main
from fpol.completion import SHELLS, script

ROOT = Path(__file__).resolve().parent.parent


def _subcommands() -> list[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return list(sub.choices)


def test_command_prints_each_script(capsys):
    for shell in SHELLS:
        assert main(["completion", shell]) == 0
        out = capsys.readouterr().out
        assert out == script(shell) + ("" if script(shell).endswith("\n") else "\n")
        for name in _subcommands():
            assert name in out, (shell, name)


def test_unknown_shell_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["completion", "csh"])
    assert e.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def _bash_complete(tmp_path: Path, words: list[str], cwd: Path = ROOT) -> list[str]:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    f = tmp_path / "fpol.bash"
    f.write_text(script("bash"))
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    prog = (f"source {f}; COMP_WORDS=({quoted}); COMP_CWORD={len(words) - 1}; "
            f"COMP_LINE=\"${{COMP_WORDS[*]}}\"; COMP_POINT=${{#COMP_LINE}}; _shtab_fpol; "
            "printf '%s\\n' \"${COMPREPLY[@]}\"")
    r = subprocess.run([bash, "-c", prog], capture_output=True, text=True, cwd=str(cwd),
                       timeout=60)
    assert r.returncode == 0, r.stderr
    return [line for line in r.stdout.splitlines() if line]


def test_bash_completes_commands_options_choices_and_files(tmp_path):
    assert sorted(_bash_complete(tmp_path, ["fpol", "co"])) == ["compile", "completion"]
    assert set(_bash_complete(tmp_path, ["fpol", ""])) >= set(_subcommands())
    assert _bash_complete(tmp_path, ["fpol", "check", "--f"]) == ["--format"]
    assert sorted(_bash_complete(tmp_path, ["fpol", "completion", ""])) == sorted(SHELLS)
    assert sorted(_bash_complete(tmp_path, ["fpol", "compile", "--emit", "c"])) == \
        ["c", "check-c", "classes"]
    # A policy argument completes file names.
    assert _bash_complete(tmp_path, ["fpol", "check", "secrets.f"], cwd=ROOT / "examples") == \
        ["secrets.fpol"]


@pytest.mark.parametrize("shell", ["zsh", "fish"])
def test_script_is_valid_for_its_shell(shell, tmp_path):
    exe = shutil.which(shell)
    text = script(shell)
    assert "compile" in text and "--emit" in text
    if exe is None:
        pytest.skip(f"{shell} is not installed, so its syntax check cannot run")
    f = tmp_path / f"fpol.{shell}"
    f.write_text(text)
    r = subprocess.run([exe, "-n", str(f)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def test_installed_entry_point_prints_a_script():
    r = subprocess.run([sys.executable, "-m", "fpol", "completion", "bash"], capture_output=True,
                       text=True, cwd=str(ROOT), timeout=120)
    assert r.returncode == 0 and "_shtab_fpol" in r.stdout
