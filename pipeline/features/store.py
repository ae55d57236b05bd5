"""The feature set every model reads: indexed ratings, per-user tasks, categorical codes, text embeddings.

Kept loadable with numpy and pyarrow alone (no pandas, no pydantic), so the training entry point runs on
a bare GPU image. Layout of ``data/features/``:

- ``arrays.npz``: ``user_cats`` int64 [U, Fu], ``item_cats`` int64 [I, Fi] (0 = unknown/missing),
  ``item_multi`` float32 [I, G] (multi-hot, e.g. genres), ``item_text`` float32 [I, D]
- ``vocab.json``: ``user_ids``/``item_ids`` (index → id), field names, per-field vocabularies (code k ↔
  ``vocab[field][k-1]``), ``multi_vocab``, ``text_model``, ``rating_min``/``rating_max``, ``item_titles``
  (in ``item_ids`` order; what the served model answers when a request asks for titles)
- ``ratings.parquet``: ``user_index`` int32, ``item_index`` int32, ``rating`` float32, ``timestamp`` int64
- ``tasks.parquet``: ``user_index``, ``item_index``, ``rating``, ``is_query`` bool (seeded split: each
  user's query set is ``features.query_size`` random ratings, the support set the rest)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

ARRAYS = ("user_cats", "item_cats", "item_multi", "item_text")
ITEM_TITLES = "item_titles"


@dataclass(frozen=True)
class FeatureSet:
    user_cats: np.ndarray
    item_cats: np.ndarray
    item_multi: np.ndarray
    item_text: np.ndarray
    vocab: dict[str, Any]
    ratings: dict[str, np.ndarray]
    tasks: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def n_users(self) -> int:
        return int(self.user_cats.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.item_cats.shape[0])

    @property
    def user_cards(self) -> list[int]:
        """Cardinality per user field, code 0 (unknown) included."""
        return [len(self.vocab["user_vocab"][f]) + 1 for f in self.vocab["user_fields"]]

    @property
    def item_cards(self) -> list[int]:
        return [len(self.vocab["item_vocab"][f]) + 1 for f in self.vocab["item_fields"]]

    @property
    def text_dim(self) -> int:
        return int(self.item_text.shape[1])

    @property
    def n_multi(self) -> int:
        return int(self.item_multi.shape[1])


def _table_to_arrays(path: Path) -> dict[str, np.ndarray]:
    table = pq.read_table(path)
    return {name: table.column(name).to_numpy() for name in table.column_names}


def _arrays_to_table(cols: dict[str, np.ndarray]) -> pa.Table:
    return pa.table({k: pa.array(v) for k, v in cols.items()})


def save_feature_set(fs: FeatureSet, folder: Path) -> None:
    """Write ``fs`` into ``folder`` (the caller makes it atomic, e.g. with ``io.atomic_dir``)."""
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "arrays.npz", **{name: getattr(fs, name) for name in ARRAYS})
    (folder / "vocab.json").write_text(json.dumps(fs.vocab, indent=1, sort_keys=True))
    pq.write_table(_arrays_to_table(fs.ratings), folder / "ratings.parquet")
    if fs.tasks:
        pq.write_table(_arrays_to_table(fs.tasks), folder / "tasks.parquet")


def load_feature_set(folder: Path) -> FeatureSet:
    folder = Path(folder)
    with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
        arrays = {name: npz[name] for name in ARRAYS}
    tasks_path = folder / "tasks.parquet"
    return FeatureSet(
        **arrays,
        vocab=json.loads((folder / "vocab.json").read_text()),
        ratings=_table_to_arrays(folder / "ratings.parquet"),
        tasks=_table_to_arrays(tasks_path) if tasks_path.exists() else {},
    )
