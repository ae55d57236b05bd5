"""Alias moves in the model registry: make a version the ``champion``, or roll back to the one before.

Each move is one ``set_registered_model_alias`` call, which reassigns the alias atomically: a server
loading ``models:/<name>@champion`` sees the old version or the new one, never none. The version that
loses ``champion`` is remembered as ``previous_champion``, so a rollback is one more move (and a second
rollback undoes the first).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from pipeline.registry.gate import CHALLENGER, CHAMPION

log = logging.getLogger(__name__)

PREVIOUS_CHAMPION = "previous_champion"
PROMOTION_TAG = "promotion"
"""Version tag saying how the version last became champion (gate, manual, rollback)."""


@dataclass(frozen=True)
class Promotion:
    """The champion after a move, the one before it, and whether anything changed."""

    champion: int
    previous_champion: int | None
    moved: bool

    def to_dict(self) -> dict[str, int | bool | None]:
        return asdict(self)


def alias_version(client: MlflowClient, name: str, alias: str) -> int | None:
    """The version ``alias`` points at, None when the alias is not set."""
    aliases = client.get_registered_model(name).aliases
    return int(aliases[alias]) if alias in aliases else None


def promote(client: MlflowClient, name: str, version: int, how: str) -> Promotion:
    """Point ``champion`` at ``version``; the replaced champion becomes ``previous_champion``.

    ``how`` is recorded as the version's ``promotion`` tag. A version that was ``challenger`` stops being
    one. Promoting the current champion changes nothing.
    """
    try:
        client.get_model_version(name, str(version))
    except MlflowException:
        raise ValueError(f"model {name!r} has no version {version}") from None
    current = alias_version(client, name, CHAMPION)
    if current == version:
        log.info("%s version %s is already the champion", name, version)
        return Promotion(version, alias_version(client, name, PREVIOUS_CHAMPION), moved=False)
    if current is not None:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, str(current))
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    client.set_model_version_tag(name, str(version), PROMOTION_TAG, how)
    log.info("%s: champion is now version %s (was %s): %s", name, version, current, how)
    return Promotion(version, current, moved=True)


def rollback(client: MlflowClient, name: str) -> Promotion:
    """Give ``champion`` back to ``previous_champion``; the demoted version becomes ``previous_champion``."""
    previous = alias_version(client, name, PREVIOUS_CHAMPION)
    if previous is None:
        raise ValueError(f"model {name!r} has no {PREVIOUS_CHAMPION} alias: nothing to roll back to")
    return promote(client, name, previous, f"rollback from version {alias_version(client, name, CHAMPION)}")
