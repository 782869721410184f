"""A wheel that works alone: `python -m build` makes an sdist and, from it, a wheel carrying
the grammar and the templates; installed into a fresh venv (no access to this checkout, no
system site-packages) its `fpol` checks, compiles, verifies and explains an example.

The build runs on a copy of the tree, so the checkout gets no build/ or dist/ folders.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from kernel_support import require_bpf

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = "secrets.fpol"
_JUNK = shutil.ignore_patterns(".git", "__pycache__", "*.egg-info", "build", "dist", ".hypothesis",
                               ".pytest_cache", "node_modules", "out", "*.bpf.o", ".deps-stamp")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build", reason="the `build` package is not installed (fpol[test])")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, ignore=_JUNK, symlinks=True)
    r = subprocess.run([sys.executable, "-m", "build", "--outdir", str(tmp / "dist"), str(src)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    wheels = list((tmp / "dist").glob("fpol-*.whl"))
    assert len(wheels) == 1 and list((tmp / "dist").glob("fpol-*.tar.gz")), r.stdout[-2000:]
    return wheels[0]


@pytest.fixture(scope="module")
def fpol_exe(wheel, tmp_path_factory) -> Path:
    env_dir = tmp_path_factory.mktemp("venv") / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return env_dir / "bin" / "fpol"


def _run(exe: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Outside the checkout, with nothing of it on the path: only the wheel can answer.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, cwd=str(cwd),
                          env=env, timeout=600)


@pytest.fixture
def workdir(tmp_path) -> Path:
    shutil.copy(ROOT / "examples" / EXAMPLE, tmp_path / EXAMPLE)
    return tmp_path


def test_wheel_carries_the_grammar_and_templates(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "fpol/grammar/fpol.lark" in names
    templates = {p.name for p in (ROOT / "templates").glob("*.j2")}
    assert templates and {f"fpol/templates/{t}" for t in templates} <= names
    for module in ("fpol/cli.py", "fpol/lsp.py", "fpol/completion.py", "fpol/compiler/driver.py",
                   "fpol/runtime/mount.py", "fpol/runtime/sdnotify.py"):
        assert module in names, module
    entry = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt")))
    assert b"fpol = fpol.cli:main" in entry


def test_installed_fpol_is_the_wheels(fpol_exe, workdir):
    py = fpol_exe.parent / "python"
    r = subprocess.run([str(py), "-c", "import fpol.compiler.parser as p; print(p.__file__)"],
                       capture_output=True, text=True, cwd=str(workdir), timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().startswith(str(fpol_exe.parent.parent)), r.stdout


def test_check_and_explain_from_the_wheel(fpol_exe, workdir):
    r = _run(fpol_exe, "check", EXAMPLE, cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith(f"{EXAMPLE}: ok (policy secrets, 5 rules"), r.stdout
    r = _run(fpol_exe, "explain", EXAMPLE, "--op", "write", "--path", "/secret/x", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("write /secret/x: deny EPERM"), r.stdout
    assert f"decided by {EXAMPLE}:9: deny write under /secret with EPERM" in r.stdout
    r = _run(fpol_exe, "completion", "bash", cwd=workdir)
    assert r.returncode == 0 and "_shtab_fpol" in r.stdout


def test_compile_from_the_wheel(fpol_exe, workdir):
    if not shutil.which(os.environ.get("CLANG", "clang")):
        pytest.skip("clang is not installed (compile builds BPF objects with it)")
    r = _run(fpol_exe, "compile", EXAMPLE, "-o", "out", cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("wrote out ("), r.stdout
    for obj in ("out", "out.check.bpf.o"):
        assert (workdir / obj).read_bytes()[:4] == b"\x7fELF", obj
    r = _run(fpol_exe, "compile", EXAMPLE, "--emit", "c", cwd=workdir)
    assert r.returncode == 0 and "fuse_ops" in r.stdout  # rendered from the wheel's templates


def test_verify_from_the_wheel(fpol_exe, workdir):
    require_bpf()
    r = _run(fpol_exe, "verify", EXAMPLE, cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "check object verified by this kernel" in r.stdout, r.stdout
    assert "instructions processed" in r.stdout, r.stdout
