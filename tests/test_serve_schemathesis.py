"""Schemathesis against the served OpenAPI document: no 5xx, and every answer matches the schema.

Runs the schemathesis CLI (examples, coverage and fuzzing phases, bounded by --max-examples and a
wall-clock timeout) against real servers on loopback ports: question answering with an API key
(so `ignored_auth` checks that the key is enforced) and fill-mask without. Excluded check:
`positive_data_acceptance` — a schema-valid body can still be refused with 422 for what a JSON
schema cannot say (a fill-mask text without the mask token, doc_stride > max_seq_len).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("schemathesis", reason="pip install schemathesis")
pytest.importorskip("fastapi")

from test_serve import API_KEY, start_servers, stop_all  # noqa: E402

MAX_EXAMPLES = int(os.environ.get("DISTILKIT_SCHEMATHESIS_EXAMPLES", "20"))
SEED = os.environ.get("DISTILKIT_SCHEMATHESIS_SEED", "20240611")  # fixed: CI runs are reproducible


@pytest.fixture(scope="module")
def servers(checkpoint):
    """Servers started on first use (the slow-marked one only when slow tests run)."""
    specs = {
        "qa": (("question-answering", checkpoint("distilbert", "question-answering", head_scale=20.0),
                "--max-inputs", "16", "--max-body-bytes", "65536", "--no-access-log"),
               {"env": {"DISTILKIT_API_KEY": API_KEY}}),
        "fm": (("fill-mask", checkpoint("roberta", "masked-lm", head_scale=20.0), "--no-access-log"), {}),
    }
    running = {}

    def get(name):
        if name not in running:
            running.update(start_servers({name: specs[name]}))
        return running[name]

    yield get
    stop_all(running.values())


# The question-answering run (the richest schema, with auth) is in the default suite; the
# fill-mask run on a RoBERTa-family checkpoint takes it past a minute on 2 cores: slow.
@pytest.mark.parametrize("name", ["qa", pytest.param("fm", marks=pytest.mark.slow)])
def test_openapi_fuzzing_finds_no_server_errors(servers, name, tmp_path):
    server = servers(name)
    cmd = [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json",
           "--checks", "all", "--exclude-checks", "positive_data_acceptance",
           "--max-examples", str(MAX_EXAMPLES), "--seed", SEED, "--workers", "2",
           "--request-timeout", "30", "--max-failures", "5"]
    if name == "qa":
        cmd += ["--header", f"Authorization: Bearer {API_KEY}"]
    run = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"})
    tail = (run.stdout + run.stderr)[-6000:]
    assert run.returncode == 0, f"schemathesis found problems:\n{tail}\n--- server log ---\n{server.log()[-4000:]}"
    assert "Traceback" not in server.log(), server.log()[-4000:]
