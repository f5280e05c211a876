"""The user's path is a test: every bash and python block of the README runs as written, in README
order, in a scratch folder laid out like the repository (configs/, scripts/, ../shared), against
the tiny random models that the README's own `scripts/tiny_model.py` loop builds.

Skipped lines are those a test cannot or must not run: the setup and the test command themselves,
downloads (`hf download`, `pip install`) and multi-process launches (`torchrun`). The main job's
default model comes from the hub, so the blocks run with DISTILKIT_MODEL pointing at the tiny QA
model, which is the README's own advice for offline machines.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, SHARED_DATA

README = ROOT / "README.md"
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)
SKIP = ("python3 -m venv", "bash scripts/setup.sh", "python3 -m pytest", "hf download", "pip install", "torchrun")


def blocks() -> list[tuple[int, str, str]]:
    text = README.read_text()
    return [(text[: m.start()].count("\n") + 1, m.group(1), m.group(2)) for m in BLOCK.finditer(text)]


def runnable(code: str) -> str:
    """The block without the lines a test must not run (a skipped line's continuations go too)."""
    out, skipping = [], False
    for line in code.splitlines():
        if not skipping and line.strip().startswith(SKIP):
            skipping = True
        if not skipping:
            out.append(line)
        if skipping and not line.rstrip().endswith("\\"):
            skipping = False
    return "\n".join(out) + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("readme")
    work = base / "work"
    work.mkdir()
    for name in ("configs", "scripts", "tests"):
        (work / name).symlink_to(ROOT / name)
    if SHARED_DATA.is_dir():
        (base / "shared").symlink_to(SHARED_DATA.parent)
    return work


def test_readme_has_the_three_commands():
    text = README.read_text()
    assert "bash scripts/setup.sh" in text and "python3 -m pytest" in text and "distilkit predict" in text
    assert len(text.splitlines()) <= 260, "the README is a user's guide: measurement detail goes to docs/"


@pytest.mark.parametrize("line,lang,code", blocks(), ids=[f"line{b[0]}" for b in blocks()])
def test_readme_block_runs(line, lang, code, workdir):
    if "../shared/data" in code and not SHARED_DATA.is_dir():
        pytest.skip(f"README block at line {line} reads {SHARED_DATA}, which is absent")
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "HF_HUB_OFFLINE": "1",
           "DISTILKIT_MODEL": str(workdir / "models" / "qa"), "PYTHONUNBUFFERED": "1"}
    if lang == "python":
        cmd = [sys.executable, "-c", code]
    else:
        script = runnable(code)
        for port in sorted(set(re.findall(r"(?:--port |localhost:)(\d{4,5})", script))):
            new = str(free_port())  # the README's ports may be taken on a test machine
            script = script.replace(f"--port {port}", f"--port {new}").replace(f"localhost:{port}", f"localhost:{new}")
        cmd = ["bash", "-euo", "pipefail", "-c", script]
    if not (workdir / "models" / "qa").is_dir():  # blocks before the model-folder loop need its models
        subprocess.run(["bash", "-c", "for t in question-answering:qa fill-mask:fill-mask "
                        "text-classification:emotion token-classification:ner; do "
                        f"{sys.executable} scripts/tiny_model.py ${{t%%:*}} models/${{t##*:}}; done"],
                       cwd=workdir, check=True, capture_output=True, env=env)
    proc = subprocess.Popen(cmd, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # servers a failed block left behind
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, f"README block at line {line} failed:\n{out[-4000:]}"
    assert "Traceback" not in out, f"README block at line {line} printed a traceback:\n{out[-4000:]}"
    assert '"error"' not in out, f"README block at line {line} got an error response:\n{out[-4000:]}"
