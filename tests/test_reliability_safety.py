"""Safety: no pickle on any load path, no secrets in the repository, bad params refused before any work.

The scanners are tested on planted snippets too (those self-tests are not reliability cases), so each
test fails when its rule is broken.
Bad params naming the key: ``tests/test_params.py::test_bad_params_name_the_key``.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from flows.cli import app
from pipeline.meta.learner import MetaLearner
from pipeline.registry.register import redact
from tests.meta_fixtures import synthetic_feature_set

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("pipeline", "flows", "benchmarks")
"""Code that loads models, checkpoints or data (tests pickle exceptions on purpose and are not scanned)."""

PICKLE_CALLS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "cloudpickle.load",
    "cloudpickle.loads",
    "dill.load",
    "dill.loads",
    "joblib.load",
    "pd.read_pickle",
    "pandas.read_pickle",
    "mlflow.pytorch.load_model",
    "mlflow.pytorch.log_model",
    "mlflow.sklearn.load_model",
    "mlflow.sklearn.log_model",
    "torch.jit.load",
}
"""Calls that unpickle (or write models that can only be read by unpickling)."""


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _keyword_is(call: ast.Call, name: str, value: object) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is value for k in call.keywords
    )


def pickle_loads(source: str) -> list[str]:
    """Calls in ``source`` that load through pickle: ``torch.load`` without ``weights_only=True``,
    ``np.load`` with ``allow_pickle=True``, and the calls of :data:`PICKLE_CALLS`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module in {"pickle", "cloudpickle", "dill", "joblib"}:
            found += [f"line {node.lineno}: from {node.module} import {a.name}" for a in node.names]
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        bad = (
            name in PICKLE_CALLS
            or (name == "torch.load" and not _keyword_is(node, "weights_only", True))
            or (name in {"np.load", "numpy.load"} and _keyword_is(node, "allow_pickle", True))
        )
        if bad:
            found.append(f"line {node.lineno}: {name}")
    return found


@pytest.mark.parametrize(
    ("snippet", "flagged"),
    [
        ("torch.load(path)", True),
        ("torch.load(path, weights_only=False)", True),
        ("torch.load(path, map_location=d, weights_only=True)", False),
        ("pickle.loads(blob)", True),
        ("from pickle import load", True),
        ("np.load(f, allow_pickle=True)", True),
        ("np.load(f, allow_pickle=False)", False),
        ("pd.read_pickle(f)", True),
        ("mlflow.pytorch.log_model(model, name='m')", True),
        ("load_file(path)", False),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_the_pickle_scanner_flags_what_it_must(snippet: str, flagged: bool) -> None:
    """The scanner itself: pickle-based loads in planted snippets are found, safe ones are not."""
    assert bool(pickle_loads(snippet)) is flagged


@pytest.mark.reliability
def test_no_pickle_based_load_in_the_sources(record_property) -> None:
    """Every torch.load is weights-only; no pickle, joblib, read_pickle or pickled MLflow flavour loads
    anything in pipeline/, flows/ or benchmarks/."""
    files = sorted(p for folder in SOURCES for p in (REPO / folder).rglob("*.py"))
    assert len(files) > 20
    found = {str(p.relative_to(REPO)): pickle_loads(p.read_text()) for p in files}
    assert {k: v for k, v in found.items() if v} == {}
    loads = sum(p.read_text().count("torch.load(") for p in files)
    record_property(
        "message", f"{len(files)} files scanned; {loads} torch.load call(s), all weights_only=True"
    )


@pytest.mark.reliability
def test_model_weights_are_saved_without_pickle(tmp_path: Path, record_property) -> None:
    """The trained model folder holds safetensors and JSON only, and loads back to the same tensors."""
    fs = synthetic_feature_set()
    learner = MetaLearner.create({"embedding_dim": 4, "hidden": [8], "device": "cpu"}, fs, seed=0)
    learner.save(tmp_path / "model")
    assert {p.suffix for p in (tmp_path / "model").iterdir()} <= {".safetensors", ".json"}
    loaded = MetaLearner.load(tmp_path / "model").tensors()
    assert all(torch.equal(loaded[k], v) for k, v in learner.tensors().items())
    record_property(
        "message", "model folder: " + ", ".join(sorted(p.name for p in (tmp_path / "model").iterdir()))
    )


# -- secrets --------------------------------------------------------------------------------------------

KEY_SHAPED = {
    "AWS access key id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "GitHub token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"),
    "Slack token": re.compile(r"\bxox[abprs]-[A-Za-z0-9-]{10,}"),
    "Hugging Face token": re.compile(r"\bhf_[A-Za-z0-9]{30,}\b"),
}
URL_PASSWORD = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:(?P<value>[^\s/@'\"]+)@")
SETTING = re.compile(
    r"(?i)(?<![{$])\b[\w.-]*(?:password|passwd|secret|token|api[_-]?key|access[_-]?key(?:[_-]?id)?)"
    r"\s*[:=]\s*['\"]?(?P<value>[^\s'\"#]*)"
)
"""``KEY: value`` / ``KEY=value`` settings in config files; a value must be empty or a placeholder."""
CONFIG_FILE = re.compile(r"(\.(ya?ml|toml|ini|cfg|env|json|sh|md)|Dockerfile|\.env\.[\w]+)$")


def _placeholder(value: str) -> bool:
    return value == "" or value.startswith(("$", "<", "{", "*"))


def secrets_in(path: str, text: str) -> list[str]:
    """Lines of ``text`` that hold a secret: key-shaped tokens anywhere; outside ``tests/`` (whose
    fixtures use invented credentials) a password in a URL; in config files, a secret-named setting
    with a literal value."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        found += [f"{path}:{number}: {kind}" for kind, rx in KEY_SHAPED.items() if rx.search(line)]
        if not path.startswith("tests/"):
            for match in URL_PASSWORD.finditer(line):
                if not _placeholder(match["value"]):
                    found.append(f"{path}:{number}: password in a URL")
        if CONFIG_FILE.search(path):
            for match in SETTING.finditer(line):
                if not _placeholder(match["value"]):
                    found.append(f"{path}:{number}: secret setting with a value")
    return found


def repository_files() -> list[str]:
    """Tracked files and the untracked ones git would add (not ignored)."""
    done = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return [name for name in done.stdout.splitlines() if (REPO / name).is_file()]


@pytest.mark.parametrize(
    ("path", "line", "flagged"),
    [
        ("pipeline/x.py", "KEY = 'AKIA" + "Q" * 16 + "'", True),
        ("docs/x.md", "-----BEGIN RSA " + "PRIVATE KEY-----", True),
        ("flows/x.py", "uri = 'postgresql://user:" + "hunter2" + "@db/x'", True),
        ("tests/x.py", "uri = 'postgresql://user:" + "hunter2" + "@db/x'", False),
        ("infra/.env.example", "POSTGRES_PASSWORD=" + "hunter2", True),
        ("infra/.env.example", "POSTGRES_PASSWORD=", False),
        ("infra/docker-compose.yml", "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?set it}", False),
        ("infra/docker-compose.yml", "URI: postgresql://${USER}:${POSTGRES_PASSWORD:?set it}@db/x", False),
        ("constraints.txt", "tokenizers==0.23.3", False),
    ],
    ids=[
        "aws-key",
        "private-key",
        "url-password",
        "url-password-in-tests",
        "env-value",
        "env-empty",
        "compose-reference",
        "compose-url-reference",
        "not-a-secret-name",
    ],
)
def test_the_secret_scanner_flags_what_it_must(path: str, line: str, flagged: bool) -> None:
    """The scanner itself: planted credentials are found, placeholders and env references are not."""
    assert bool(secrets_in(path, line)) is flagged


@pytest.mark.reliability
def test_no_secrets_in_the_repository(record_property) -> None:
    """No key-shaped token, password in a URL or literal secret setting in any file git holds or would
    add; infra/.env (real values) is ignored, and .env.example has placeholders only."""
    files = repository_files()
    assert "infra/.env.example" in files and "infra/.env" not in files
    found = []
    for name in files:
        try:
            text = (REPO / name).read_text()
        except UnicodeDecodeError:
            continue
        found += secrets_in(name, text)
    assert found == []
    ignored = subprocess.run(["git", "check-ignore", "-q", "infra/.env"], cwd=REPO, check=False)
    assert ignored.returncode == 0, "infra/.env must be git-ignored"
    example = (REPO / "infra" / ".env.example").read_text().splitlines()
    secret_names = [
        line.split("=")[0] for line in example if re.match(r"\w*(PASSWORD|SECRET|TOKEN)\w*=", line)
    ]
    assert secret_names and all(line.endswith("=") for line in example if line.split("=")[0] in secret_names)
    record_property(
        "message", f"{len(files)} files scanned, 0 findings; placeholders: {', '.join(secret_names)}"
    )


@pytest.mark.reliability
def test_tracking_uri_credentials_never_reach_messages_or_records(record_property) -> None:
    """Server credentials come from the environment; a URI that carries a password is redacted wherever
    it is shown (error messages, registration.json)."""
    password = "not-a-real-" + "password"
    assert redact(f"http://ops:{password}@mlflow.internal:5000/x") == "http://ops:***@mlflow.internal:5000/x"
    assert redact("sqlite:////tmp/mlruns.db") == "sqlite:////tmp/mlruns.db"
    record_property("message", redact(f"http://ops:{password}@mlflow.internal:5000"))


# -- params -----------------------------------------------------------------------------------------------


@pytest.mark.reliability
@pytest.mark.parametrize(
    ("command", "override", "fragment"),
    [
        ("ingest", "data.max_file_mbb=1", "data.max_file_mbb: unknown key"),
        ("validate", "validate.on_error=ignore", "validate.on_error"),
        ("run", "train.inner_steps=-1", "train.inner_steps"),
    ],
)
def test_bad_params_are_refused_before_any_work(
    command: str,
    override: str,
    fragment: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    record_property,
) -> None:
    """Unknown key or invalid value ({override}): `metarec {command}` exits 2 naming the key; nothing is
    read, written or started."""
    monkeypatch.chdir(tmp_path)
    done = CliRunner().invoke(app, [command, "--set", override])
    assert done.exit_code == 2 and "Traceback" not in done.output
    assert fragment in done.stderr
    assert list(tmp_path.iterdir()) == []
    record_property("message", done.stderr.strip().splitlines()[1].strip())
