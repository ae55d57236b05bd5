"""The served model: an MLflow pyfunc that adapts the meta-learner to each request's user, then ranks.

A request carries a (possibly unknown, possibly brand-new) user's few ratings: they become the support
set, the model adapts to them (the fold-in's ridge solves, MeLU's inner loop), and the adapted model
scores and orders the candidates (the query set).

``predict`` takes plain dicts (``list[dict[str, Any]]``: MLflow checks only that) and validates each
against the strict :class:`Request` itself, so that a bad request gets one short line naming the request
and the field, e.g. ``request 0: k: expected an integer (got 'ten')``, instead of MLflow's quoted
pydantic report: unknown fields, wrong types (no coercion: ``"5"`` is not a number, ``50`` not an item
id), and the rules a schema cannot express (known item ids and attribute values, the rating range,
k > 0). Every rejection is a :class:`RequestError`: HTTP 400 when served.
A NaN or infinite score is never answered: the request fails with ``INTERNAL_ERROR`` (HTTP 500), not a
fallback ranking, so a broken model shows in the server's error rate instead of serving silently
wrong results (the client keeps its own fallback, e.g. popularity).

The model's ``model_config`` may set ``compression`` (``register.compression``): the scorer then runs the
candidate pass compressed (see :mod:`pipeline.registry.scorer`).
"""

from __future__ import annotations

import functools
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel, PythonModelContext
from pydantic import BaseModel, ConfigDict, ValidationError

from pipeline.features.categorical import encode_user
from pipeline.features.store import ITEM_TITLES
from pipeline.meta.learner import resolve_device
from pipeline.meta.learners import load_learner
from pipeline.registry.scorer import FoldInScorer, NonFiniteScores, make_scorer

log = logging.getLogger(__name__)

MODEL_ARTIFACT = "meta_model"
VOCAB_ARTIFACT = "vocab"
COMPRESSION_KEY = "compression"
DEFAULT_K = 10
USER_CODES_CACHE = 4096
"""Distinct attribute sets whose codes are kept: encoding (pandas) costs about half of an adaptation."""


class _Strict(BaseModel):
    """No coercion between types, no unknown fields."""

    model_config = ConfigDict(strict=True, extra="forbid")


class RatedItem(_Strict):
    item_id: str
    rating: float


class Request(_Strict):
    """One user: ``ratings`` (may be empty) form the support set; ``candidates`` default to unrated items.

    ``clicked``: items the user interacted with but did not rate; with the rated ones they form the user's
    text profile, so even a user with no ratings gets recommendations shaped by what they looked at.
    ``attributes`` values are checked against the vocabulary (numbers for bucketed fields such as age).
    ``titles``: answer the items' titles too.
    """

    user_id: str
    ratings: list[RatedItem]
    attributes: dict[str, Any] | None = None
    clicked: list[str] | None = None
    candidates: list[str] | None = None
    k: int | None = None
    """How many items to return (default ``DEFAULT_K``)."""
    titles: bool = False


class Response(BaseModel):
    """The top ``k`` candidates, best first, with their predicted ratings (and titles, when asked). The
    fold-in's ranking head orders them, so the ratings need not descend.

    The output schema; ``predict`` answers plain dicts of this shape, which read like the served JSON.
    """

    items: list[str]
    scores: list[float]
    titles: list[str] | None = None


class RequestError(MlflowException):
    """A rejected request: HTTP 400 with ``message`` alone as the answer's message.

    The scoring server prefixes an error's message with the whole request (``Failed to predict data
    '...'``); the JSON it answers is built by :meth:`serialize_as_json`, which keeps the one line.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)
        self.reason = message

    def serialize_as_json(self) -> str:
        return json.dumps({"error_code": self.error_code, "message": self.reason})


@dataclass(frozen=True)
class _Task:
    user_cats: np.ndarray
    support_items: np.ndarray
    support_ratings: np.ndarray
    query_items: np.ndarray
    context_items: np.ndarray | None
    all_items: bool
    """The candidates are every unrated item: score all items in one pass, then drop the rated ones."""
    k: int
    titles: bool


EXPECTED = {
    "missing": "required",
    "int_type": "expected an integer",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected an object",
}
"""What each pydantic error type of a strict request means, in the words of the answer."""
SHOWN_CHARS = 40


def _invalid(position: int, field: str, rule: str) -> RequestError:
    return RequestError(f"request {position}: {field}: {rule}")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def _field(loc: tuple[int | str, ...]) -> str:
    """pydantic's error location as the request spells it: ``ratings[0].item_id``."""
    return "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc).lstrip(".")


def parse_request(position: int, raw: Any) -> Request:
    """``raw`` as a :class:`Request`; a :class:`RequestError` naming the first problem otherwise."""
    try:
        return Request.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
    loc = tuple(error["loc"])
    if error["type"] == "extra_forbidden":
        fields = Request.model_fields if len(loc) == 1 else RatedItem.model_fields
        rule = f"unknown field (known: {', '.join(fields)})"
    elif error["type"] == "missing":
        rule = EXPECTED["missing"]
    else:
        rule = f"{EXPECTED.get(error['type'], error['msg'])} (got {_shown(error['input'])})"
    field = _field(loc)
    raise RequestError(f"request {position}: {field}: {rule}" if field else f"request {position}: {rule}")


class MetaRecModel(PythonModel):
    """Pyfunc wrapper around the trained meta-learner (either ``train.model``); holds no state until
    ``load_context``."""

    def load_context(self, context: PythonModelContext) -> None:
        folder = Path(context.artifacts[MODEL_ARTIFACT])
        learner = load_learner(folder, device=resolve_device("auto"))
        compression = (context.model_config or {}).get(COMPRESSION_KEY, "none")
        self._scorer = make_scorer(learner, compression)
        self._vocab: dict[str, Any] = json.loads(Path(context.artifacts[VOCAB_ARTIFACT]).read_text())
        item_ids = [str(i) for i in self._vocab["item_ids"]]
        self._item_ids = np.asarray(item_ids, dtype=object)
        self._item_index = {item_id: index for index, item_id in enumerate(item_ids)}
        titles = self._vocab.get(ITEM_TITLES)
        self._titles = None if titles is None else np.asarray([str(t) for t in titles], dtype=object)
        self._rating_min = float(self._vocab["rating_min"])
        self._rating_max = float(self._vocab["rating_max"])
        self._user_codes = functools.lru_cache(maxsize=USER_CODES_CACHE)(self._encode_user)
        log.info("loaded meta-learner for %d items (compression: %s)", len(item_ids), compression)

    def predict(  # type: ignore[override]  # MLflow 3 accepts predict without ``context``
        self, model_input: list[dict[str, Any]], params: dict[str, Any] | None = None
    ) -> list[Response]:
        """Check every request (a bad one rejects the batch), then adapt to each and rank its candidates."""
        tasks = [self._task(i, parse_request(i, raw)) for i, raw in enumerate(model_input)]
        ranked = []
        for position, task in enumerate(tasks):
            query = None if task.all_items else task.query_items
            try:
                raw = self._scorer.scores(
                    task.user_cats,
                    task.support_items,
                    task.support_ratings,
                    query,
                    clip=False,
                    context_items=task.context_items,
                )
                order = raw
                if isinstance(self._scorer, FoldInScorer) and self._scorer.ranks:
                    order = self._scorer.ranking(task.support_items, query)
            except NonFiniteScores as exc:
                log.error("request %d: %s", position, exc)
                raise MlflowException(f"request {position}: {exc}", error_code=INTERNAL_ERROR) from None
            if task.all_items:
                raw, order = raw[task.query_items], order[task.query_items]
            ranked.append(self._rank(task, np.asarray(raw, np.float64), np.asarray(order, np.float64)))
        return ranked  # type: ignore[return-value]  # dicts shaped like Response (see there)

    def _task(self, position: int, request: Request) -> _Task:
        k = DEFAULT_K if request.k is None else request.k
        if k <= 0:
            raise _invalid(position, "k", f"must be > 0 (got {k})")
        if request.titles and self._titles is None:
            raise _invalid(position, "titles", "this model version has no item titles (registered without)")
        support_items = self._indices(position, "ratings", [r.item_id for r in request.ratings], ".item_id")
        support_ratings = np.asarray([r.rating for r in request.ratings], dtype=np.float32)
        lo, hi = self._rating_min, self._rating_max
        outside = np.flatnonzero(~((support_ratings >= lo) & (support_ratings <= hi)))
        if outside.size:
            j = int(outside[0])
            rule = f"must be within [{lo:g}, {hi:g}] (got {request.ratings[j].rating})"
            raise _invalid(position, f"ratings[{j}].rating", rule)
        if request.candidates is None:
            unrated = np.ones(len(self._item_ids), dtype=bool)
            unrated[support_items] = False
            query_items = np.flatnonzero(unrated)
        else:
            query_items = self._indices(position, "candidates", request.candidates, "")
        context_items = (
            None if request.clicked is None else self._indices(position, "clicked", request.clicked, "")
        )
        return _Task(
            self._user_cats(position, request.attributes or {}),
            support_items,
            support_ratings,
            query_items,
            context_items,
            request.candidates is None,
            k,
            request.titles,
        )

    def _user_cats(self, position: int, attributes: dict[str, Any]) -> np.ndarray:
        """The user's attribute codes; an unknown field, a value of the wrong kind or one the vocabulary
        does not hold is rejected, naming the field (and the known values). A null value is missing."""
        fields = self._vocab["user_fields"]
        given = {}
        for name, value in sorted(attributes.items()):
            if name not in fields:
                known = ", ".join(fields) or "none"
                raise _invalid(position, f"attributes.{name}", f"unknown user attribute (known: {known})")
            if value is None:
                continue
            binned = name in self._vocab["user_bins"]
            kinds = (int, float) if binned else (str, int)
            if isinstance(value, bool) or not isinstance(value, kinds):
                kind = "a number" if binned else "a string"
                raise _invalid(position, f"attributes.{name}", f"expected {kind} (got {_shown(value)})")
            given[name] = value
        codes = self._user_codes(tuple(given.items()))
        for name in given:
            if codes[fields.index(name)] == 0:
                known = ", ".join(self._vocab["user_vocab"][name])
                rule = f"unknown value {given[name]!r} (known: {known})"
                raise _invalid(position, f"attributes.{name}", rule)
        return codes

    def _encode_user(self, attributes: tuple[tuple[str, str | int | float], ...]) -> np.ndarray:
        return encode_user(dict(attributes), self._vocab)

    def _indices(self, position: int, field: str, item_ids: list[str], suffix: str) -> np.ndarray:
        """Item ids → indices; an unknown or repeated id is rejected, naming its place in the request."""
        indices = np.empty(len(item_ids), dtype=np.int64)
        seen: set[str] = set()
        for j, item_id in enumerate(item_ids):
            index = self._item_index.get(item_id)
            if index is None:
                raise _invalid(position, f"{field}[{j}]{suffix}", f"unknown item id {item_id!r}")
            if item_id in seen:
                raise _invalid(position, f"{field}[{j}]{suffix}", f"item id {item_id!r} appears twice")
            seen.add(item_id)
            indices[j] = index
        return indices

    def _rank(self, task: _Task, raw: np.ndarray, order: np.ndarray) -> dict[str, list[Any]]:
        """Best first by ``order``: the model's ranking head, or else the unclipped prediction (two items
        above the top rating still differ); the scores answered are predicted ratings, clipped to the
        rating range."""
        top = np.argsort(-order, kind="stable")[: task.k]
        scores = np.clip(raw[top], self._rating_min, self._rating_max)
        chosen = task.query_items[top]
        answer = {"items": self._item_ids[chosen].tolist(), "scores": scores.tolist()}
        if task.titles and self._titles is not None:
            answer["titles"] = self._titles[chosen].tolist()
        return answer
