"""Record ``--set`` overrides in the params file, as ``dvc exp run --set-param`` does.

The stages that DVC runs read ``params.yaml``; writing the overrides there keeps ``dvc.lock``, the
params and the results in agreement. Comments and key order are preserved.
"""

from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML

from pipeline.io import write_with
from pipeline.params import parse_override


def write_overrides(path: Path, overrides: list[str]) -> None:
    yaml = YAML()
    yaml.preserve_quotes = True
    tree = yaml.load(path.read_text()) if path.exists() else None
    if tree is None:
        tree = {}
    for text in overrides:
        key, value = parse_override(text)
        node = tree
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, {})
        node[leaf] = value
    write_with(path, lambda tmp: yaml.dump(tree, tmp))
