"""The promotion gate: the challenger takes ``champion`` only if it is better on the same folds, reliably.

Both versions' evaluations (``cv.json``, ``per_user.json``) come from ``evaluate``, whose folds are fixed
by the fold protocol (protocol, number of folds, support size, seed): the same protocol means the same
seeded partition of the users, so the two evaluations can be compared pair by pair. A different protocol
refuses the comparison.

The paired test is a one-sided paired t-test of "the challenger's error is lower". It pairs **users**
when both evaluations hold per-user values of the gate metric (``per_user.json``, or the ``per_user`` key
of an older ``cv.json``: ``<scenario>.<model>.<metric>``, a mapping user id → value; the users present in
both are paired), else **folds**
(``per_fold.<scenario>.<model>.<metric>``, one value per fold). Per-user pairs are many, so the test
has power; per-fold pairs are few (``eval.folds``), so only a consistent gain passes.

The data is not part of the protocol: after new ratings arrive (feedback), the same seed partitions a
different set of users, fold f no longer holds the same users in both files, and the per-fold test is
only approximately paired; per-user values keep the pairing exact for the users both evaluations share.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

CHAMPION = "champion"
CHALLENGER = "challenger"
GATE_SCENARIO = "new_user"
META_MODEL = "meta"
PROTOCOL_KEYS = ("protocol", "folds", "support_size", "seed", "weighting")
DEFAULTS = {"weighting": "rows"}
"""What a cv.json written before the key existed meant: MAE over query rows."""
ZERO_SPREAD = 1e-12


def fold_protocol(cv: dict[str, Any], source: Path) -> str:
    """What fixes the folds of ``cv``, as one string: ``"kfold folds=5 support_size=10 seed=42"``."""
    cv = DEFAULTS | cv
    missing = [key for key in PROTOCOL_KEYS if key not in cv]
    if missing:
        raise ValueError(f"{source}: missing {', '.join(missing)}; the promotion gate needs the protocol")
    return f"{cv['protocol']} " + " ".join(f"{key}={cv[key]}" for key in PROTOCOL_KEYS[1:])


@dataclass(frozen=True)
class Evidence:
    """One version's evaluation on the gate metric: its fold protocol, mean, per-fold and per-user values."""

    protocol: str
    mean: float
    per_fold: tuple[float, ...]
    per_user: dict[str, float] = field(default_factory=dict)


def evidence(
    cv: dict[str, Any], metric: str, source: Path, per_user: dict[str, Any] | None = None
) -> Evidence:
    """The gate's view of ``cv.json`` and ``per_user`` (the contents of ``per_user.json``; None: the
    ``per_user`` key of a ``cv.json`` written before the two were split): ``metric`` of the meta model in
    the ``new_user`` scenario."""
    where = f"{GATE_SCENARIO}.{META_MODEL}.{metric}"
    try:
        mean = float(cv["scenarios"][GATE_SCENARIO][META_MODEL][metric]["mean"])
        per_fold = tuple(float(v) for v in cv["per_fold"][GATE_SCENARIO][META_MODEL][metric])
    except (KeyError, TypeError, ValueError):
        raise ValueError(
            f"{source}: scenarios.{where}.mean or per_fold.{where} is missing or not numeric; "
            "the promotion gate needs both"
        ) from None
    if not math.isfinite(mean) or len(per_fold) < 1:
        raise ValueError(
            f"{source}: scenarios.{where}.mean is NaN or infinite ({mean}) or per_fold.{where} is empty"
        )
    values = cv.get("per_user", {}) if per_user is None else per_user
    users = values.get(GATE_SCENARIO, {}).get(META_MODEL, {}).get(metric, {})
    if not isinstance(users, dict):
        raise ValueError(f"{source}: per_user.{where} must map user id to value")
    per_user = {str(user): float(value) for user, value in users.items()}
    return Evidence(fold_protocol(cv, source), mean, per_fold, per_user)


def paired_p_value(challenger: np.ndarray, champion: np.ndarray) -> float:
    """One-sided paired t-test p-value of H1 "challenger's error < champion's"; NaN with under 2 pairs.

    Differences equal up to rounding (``ZERO_SPREAD``: no variance to test) give 0 when they favour the
    challenger, else 1.
    """
    diff = np.asarray(champion, dtype=np.float64) - np.asarray(challenger, dtype=np.float64)
    if diff.size < 2:
        return float("nan")
    if np.ptp(diff) <= ZERO_SPREAD:
        return 0.0 if diff.mean() > 0 else 1.0
    t = diff.mean() / (diff.std(ddof=1) / math.sqrt(diff.size))
    return float(stats.t.sf(t, df=diff.size - 1))


@dataclass(frozen=True)
class GateDecision:
    """Which alias the new version gets, and why; the numbers behind it for tags and reports."""

    alias: str
    reason: str
    metric: str
    value: float
    champion_value: float | None = None
    champion_version: int | None = None
    improvement: float | None = None
    p_value: float | None = None
    paired_over: str | None = None
    n_pairs: int = 0
    min_improvement: float = 0.0
    max_p: float = 0.05
    protocol: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pairs(new: Evidence, old: Evidence) -> tuple[str, np.ndarray, np.ndarray]:
    common = sorted(set(new.per_user) & set(old.per_user))
    if len(common) >= 2:
        mine, theirs = ([e.per_user[u] for u in common] for e in (new, old))
        return "users", np.array(mine), np.array(theirs)
    return "folds", np.array(new.per_fold), np.array(old.per_fold)


def decide(
    new: Evidence,
    champion: Evidence | None,
    champion_version: int | None,
    metric: str,
    min_improvement: float,
    max_p: float,
) -> GateDecision:
    """``champion`` for the first version, or when the error drops by more than ``min_improvement`` and the
    paired test gives p < ``max_p``; else ``challenger``, also when the champion (``champion_version``)
    has no readable evaluation (``champion`` None) or was evaluated under another fold protocol.

    A challenger whose metric is missing or not finite (mean, a fold or a user) loses: ``challenger``
    even when there is no champion yet."""
    base = GateDecision(
        CHALLENGER,
        "",
        metric,
        new.mean,
        champion_version=champion_version,
        min_improvement=min_improvement,
        max_p=max_p,
        protocol=new.protocol,
    )
    values = [new.mean, *new.per_fold, *new.per_user.values()]
    if not new.per_fold or not all(math.isfinite(v) for v in values):
        reason = f"not promoted: the challenger's {metric} is missing or not finite (mean {new.mean})"
        return GateDecision(**{**base.to_dict(), "reason": reason})
    if champion_version is None:
        return GateDecision(**{**base.to_dict(), "alias": CHAMPION, "reason": "no champion yet"})
    if champion is None:
        reason = f"not compared: champion version {champion_version} has no evaluation the gate can read"
        return GateDecision(**{**base.to_dict(), "reason": reason})
    fields: dict[str, Any] = {**base.to_dict(), "champion_value": champion.mean}
    if champion.protocol != new.protocol:
        reason = (
            f"not compared: fold protocol '{new.protocol}' differs from the champion's '{champion.protocol}'"
        )
        return GateDecision(**{**fields, "reason": reason})
    paired_over, mine, theirs = _pairs(new, champion)
    if mine.size != theirs.size:
        reason = f"not compared: {mine.size} folds here, {theirs.size} in the champion's evaluation"
        return GateDecision(**{**fields, "reason": reason})
    improvement = champion.mean - new.mean
    p_value = paired_p_value(mine, theirs)
    fields.update(improvement=improvement, p_value=p_value, paired_over=paired_over, n_pairs=int(mine.size))
    summary = f"{metric} {new.mean:.4f} vs {champion.mean:.4f}, paired over {mine.size} {paired_over}"
    if not improvement > min_improvement:
        reason = f"improvement {improvement:.4f} is not above min_improvement {min_improvement:g} ({summary})"
        return GateDecision(**{**fields, "reason": reason})
    if not p_value < max_p:
        reason = f"paired t-test p = {p_value:.4g} is not below max_p {max_p:g} ({summary})"
        return GateDecision(**{**fields, "reason": reason})
    reason = f"improvement {improvement:.4f} > {min_improvement:g}, p = {p_value:.4g} < {max_p:g} ({summary})"
    return GateDecision(**{**fields, "alias": CHAMPION, "reason": reason})
