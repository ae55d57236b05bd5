"""Stage ``source``: make the raw files a DVC dependency, so changed data is re-ingested.

The raw files live outside the project (``data.path``, the mirror, the download cache). This stage
resolves them as ``ingest`` will and writes ``data/source/``: one symbolic link per file read, which DVC
follows when it hashes ``ingest``'s dependencies, and ``manifest.json`` with each file's sha256. A file
edited in place therefore shows in ``dvc status`` and makes the next ``dvc repro`` re-ingest; the
manifest's digest is recorded with the registered model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from pipeline.data.ingest import resolve_source
from pipeline.data.source import sha256_of
from pipeline.io import atomic_dir
from pipeline.params import Params
from pipeline.paths import Paths

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"


def snapshot_source(params: Params, paths: Paths) -> dict[str, Any]:
    """Write ``paths.source`` (links and manifest) for the files ``ingest`` will read; return the manifest."""
    raw = resolve_source(params, paths)
    files = {name: sha256_of(raw.folder / name) for name in raw.files} if raw.folder else {}
    manifest = {"source": params.data.source, "layout": raw.layout, "files": files}
    with atomic_dir(paths.source) as staging:
        for name in raw.files:
            assert raw.folder is not None
            (staging / name).symlink_to((raw.folder / name).resolve())
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    where = raw.folder if raw.folder is not None else "the synthetic generator"
    logger.info("source: %d file(s) from %s", len(files), where)
    return manifest


def source_digest(paths: Paths) -> str:
    """sha256 of the manifest the last ``source`` stage wrote (the raw data's identity), or "unknown"."""
    manifest = Path(paths.source) / MANIFEST
    if not manifest.is_file():
        return "unknown"
    return hashlib.sha256(manifest.read_bytes()).hexdigest()
