"""The tuned-params file (top-level ``tuned``, ``params/tuned.yaml``): the best values of each study as
overrides that ``load_params`` applies over params.yaml and under ``--set``.

Written once, atomically, after every study finished: an interrupted tuning leaves the file as it was.
A model tuned again replaces its section; the sections of models not tuned this time stay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.io import write_text
from pipeline.params import Params, read_tuned
from pipeline.tuning.spaces import section

HEADER = """\
# Tuned hyperparameters, written by `metarec tune` (validation users of the folds' training users).
# load_params applies them over params.yaml and under --set; remove a section to go back to params.yaml.
"""


def tuned_tree(existing: dict[str, Any], best: dict[str, dict[str, Any]], params: Params) -> dict[str, Any]:
    """``existing`` overrides with each tuned model's section replaced by its best ``values``; sections
    nested in it (``train.foldin`` in ``train``) belong to other models and stay."""
    tree = {key: dict(value) for key, value in existing.items()}
    for model, result in best.items():
        *parents, leaf = section(model, params)
        node = tree
        for key in parents:
            node = node.setdefault(key, {})
        nested = {k: v for k, v in node.get(leaf, {}).items() if isinstance(v, dict)}
        node[leaf] = nested | dict(result["values"])
    return tree


def tuned_text(tree: dict[str, Any]) -> str:
    return HEADER + yaml.safe_dump(tree, sort_keys=True, default_flow_style=False)


def write_tuned(path: Path, best: dict[str, dict[str, Any]], params: Params) -> str:
    """Merge ``best`` (``{model: {"values": {...}, ...}}``, tuned under ``params``) into the tuned-params
    file ``path``; return the text written."""
    text = tuned_text(tuned_tree(read_tuned(path), best, params))
    write_text(text, path)
    return text
