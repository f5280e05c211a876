"""Model references users type: paths that do not exist are 'not a directory' (not hub ids), the
offline hint names the current `hf download`, and `predict` says when it waits on stdin."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from distilkit.hub import ModelNotFoundError, resolve

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("ref", ["./tiny_qa", "/nonexistent/tiny_qa", "~/no-such-model-dir", "a/b/c", "my model",
                                 "models/tiny_qa"])
def test_path_like_reference_is_not_a_directory(offline, ref):
    (offline / "models" / "tiny-qa").mkdir(parents=True)  # `models/` makes models/tiny_qa a path
    with pytest.raises(ModelNotFoundError, match=r"is not a directory") as e:
        resolve(ref)
    assert "Hugging Face cache" not in str(e.value)


def test_not_a_directory_suggests_close_names(offline):
    (offline / "models" / "tiny-qa").mkdir(parents=True)
    with pytest.raises(ModelNotFoundError, match=r"did you mean models/tiny-qa\?"):
        resolve("models/tiny_qa")


def test_a_file_is_not_a_directory(offline):
    (offline / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="'config.json' is not a directory"):
        resolve("config.json")


def test_hub_id_offline_hint_uses_hf_download(offline):
    with pytest.raises(ModelNotFoundError) as e:
        resolve("distilbert/distilbert-base-cased-distilled-squad")
    message = str(e.value)
    assert "hf download distilbert/distilbert-base-cased-distilled-squad --local-dir" in message
    assert "huggingface-cli" not in message and "\n" not in message


def test_no_deprecated_huggingface_cli_hint_anywhere():
    """huggingface_hub refuses `huggingface-cli download` now ("Use hf instead")."""
    files = [*(ROOT / "src").rglob("*.py"), *(ROOT / "docs").rglob("*.md")]
    assert files
    assert [str(f) for f in files if "huggingface-cli" in f.read_text(encoding="utf-8")] == []


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("tty", [True, False])
def test_predict_says_it_reads_stdin_on_a_terminal(checkpoint, monkeypatch, capsys, tty):
    from distilkit.cli import main

    request = json.dumps({"question": "Who?", "context": "My name is John."})
    monkeypatch.setattr("sys.stdin", _Terminal(request) if tty else io.StringIO(request))
    assert main(["predict", "question-answering", "--model", str(checkpoint("distilbert", "question-answering"))]) == 0
    captured = capsys.readouterr()
    assert ("reading the request JSON from stdin" in captured.err) is tty
    assert json.loads(captured.out)  # the answer still comes on stdout
