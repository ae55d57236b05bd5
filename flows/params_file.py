"""Record ``--set`` overrides in the params file, as ``dvc exp run --set-param`` does.

The stages that DVC runs read ``params.yaml``; writing the overrides there keeps ``dvc.lock``, the
params and the results in agreement. Only the overridden values change: every other line stays byte for
byte as it was (comments, quotes, ``null``, flow-style lists such as ``[128, 64]``, long lines).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.representer import RoundTripRepresenter

from pipeline.io import write_with
from pipeline.params import ParamsError, parse_override

WIDTH = 1 << 16
"""Never wrap a line (ruamel's default wraps flow lists at 80 columns)."""


def _represent_none(representer: RoundTripRepresenter, _: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = WIDTH
    yaml.representer.add_representer(type(None), _represent_none)
    return yaml


def _styled(value: Any, old: Any) -> Any:
    """``value`` as a node styled like ``old``, the value it replaces: a list stays in flow style
    (``[a, b]``) unless the list it replaces was a block list."""
    if not isinstance(value, list):
        return value
    seq = CommentedSeq(value)
    if not isinstance(old, CommentedSeq) or old.fa.flow_style():
        seq.fa.set_flow_style()
    return seq


def write_overrides(path: Path, overrides: list[str]) -> list[str]:
    """Set each ``section.key=value`` of ``overrides`` in the YAML file ``path`` (created if missing);
    returns the overrides as ``key=value``, in order, for the caller to report."""
    yaml = _yaml()
    tree = yaml.load(path.read_text()) if path.exists() else None
    if tree is None:
        tree = CommentedMap()
    saved = []
    for text in overrides:
        key, value = parse_override(text)
        node = tree
        *sections, leaf = key.split(".")
        for section in sections:
            node = node.setdefault(section, CommentedMap())
        node[leaf] = _styled(value, node.get(leaf))
        saved.append(f"{key}={text.partition('=')[2].strip()}")
    write_with(path, lambda tmp: yaml.dump(tree, tmp))
    return saved


def overrides_from(path: Path) -> list[str]:
    """Every leaf of the YAML params file ``path`` (a config that sets some keys of params.yaml, such as
    ``params/ml1m.yaml``) as a ``section.key=value`` override, in file order."""
    if not path.is_file():
        raise ParamsError(f"params file not found: {path}")
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ParamsError(f"{path}: the top level must be a mapping of sections")
    out: list[str] = []

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict) and value:
                walk(value, f"{prefix}{key}.")
            else:
                text = yaml.safe_dump(value, default_flow_style=True, width=WIDTH).strip()
                out.append(f"{prefix}{key}={text.removesuffix('...').strip()}")

    walk(tree, "")
    return out
