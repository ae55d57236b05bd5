"""Alias moves against a real MLflow registry (sqlite): promote, remember the previous champion, roll back."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline.registry.promote import Promotion, alias_version, promote, rollback

NAME = "metarec"


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    """A registry with versions 1-3 of ``NAME`` (plain folders as sources: aliases need no model files)."""
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    for v in range(1, 4):
        source = tmp_path / f"v{v}"
        source.mkdir()
        client.create_model_version(NAME, str(source))
    return client


def aliases(client: MlflowClient) -> dict[str, int]:
    return {k: int(v) for k, v in client.get_registered_model(NAME).aliases.items()}


def test_promote_moves_champion_and_remembers_the_previous_one(client: MlflowClient) -> None:
    assert promote(client, NAME, 1, "gate: first") == Promotion(1, None, moved=True)
    assert aliases(client) == {"champion": 1}
    assert promote(client, NAME, 2, "manual") == Promotion(2, 1, moved=True)
    assert aliases(client) == {"champion": 2, "previous_champion": 1}
    assert client.get_model_version(NAME, "2").tags["promotion"] == "manual"
    assert promote(client, NAME, 2, "manual") == Promotion(2, 1, moved=False)
    assert aliases(client) == {"champion": 2, "previous_champion": 1}


def test_a_promoted_challenger_stops_being_challenger(client: MlflowClient) -> None:
    promote(client, NAME, 1, "gate")
    client.set_registered_model_alias(NAME, "challenger", "3")
    promote(client, NAME, 2, "manual")
    assert aliases(client) == {"champion": 2, "previous_champion": 1, "challenger": 3}
    promote(client, NAME, 3, "manual")
    assert aliases(client) == {"champion": 3, "previous_champion": 2}


def test_rollback_restores_the_previous_champion_and_can_be_undone(client: MlflowClient) -> None:
    promote(client, NAME, 1, "gate")
    promote(client, NAME, 3, "gate")
    assert rollback(client, NAME) == Promotion(1, 3, moved=True)
    assert aliases(client) == {"champion": 1, "previous_champion": 3}
    assert client.get_model_version(NAME, "1").tags["promotion"] == "rollback from version 3"
    assert rollback(client, NAME) == Promotion(3, 1, moved=True)
    assert alias_version(client, NAME, "champion") == 3


def test_errors_name_the_model_and_what_is_missing(client: MlflowClient) -> None:
    with pytest.raises(ValueError, match=r"model 'metarec' has no previous_champion alias"):
        rollback(client, NAME)
    with pytest.raises(ValueError, match=r"model 'metarec' has no version 7"):
        promote(client, NAME, 7, "manual")
    assert alias_version(client, NAME, "champion") is None
