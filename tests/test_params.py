"""The params model: defaults, overrides, and errors that name the bad key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from flows.params_file import overrides_from, write_overrides
from pipeline.params import Params, ParamsError, load_params, parse_override

REPO = Path(__file__).resolve().parents[1]


def test_repo_params_file_is_valid_and_complete() -> None:
    """params.yaml holds every key of the model, so the file documents every setting."""
    params = load_params(REPO / "params.yaml")
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())

    def keys(tree: dict, prefix: str = "") -> set[str]:
        out = set()
        for k, v in tree.items():
            out |= keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
        return out

    assert keys(on_disk) == keys(params.to_dict())


def test_override_is_parsed_as_yaml() -> None:
    assert parse_override("train.inner_steps=3") == ("train.inner_steps", 3)
    assert parse_override("train.hidden=[32, 16]") == ("train.hidden", [32, 16])
    assert parse_override("data.path=/tmp/x") == ("data.path", "/tmp/x")
    with pytest.raises(ParamsError, match=r"section\.key=value"):
        parse_override("train.inner_steps")


def test_overrides_apply_and_validate(tmp_path: Path) -> None:
    p = load_params(None, ["train.inner_steps=2", "data.source=synthetic", "eval.models=[meta]"])
    assert p.train.inner_steps == 2
    assert p.data.source == "synthetic"
    assert p.eval.models == ("meta",)
    assert p.train.outer_lr == Params().train.outer_lr


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("train.inner_stepz=2", "train.inner_stepz: unknown key"),
        ("train.inner_steps=-1", "train.inner_steps"),
        ("data.source=netflix", "data.source"),
        ("validate.rating_min=9", "rating_min must be < rating_max"),
        ("bogus.key=1", "bogus: unknown key"),
    ],
)
def test_bad_params_name_the_key(override: str, fragment: str) -> None:
    with pytest.raises(ParamsError) as err:
        load_params(None, [override])
    assert fragment in str(err.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")


def test_digest_changes_with_params() -> None:
    assert Params().digest() == load_params(None).digest()
    assert Params().digest() != load_params(None, ["seed=7"]).digest()


def test_write_overrides_keeps_comments(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("# top comment\ntrain:\n  inner_steps: 5  # steps\n  outer_lr: 0.001\n")
    write_overrides(f, ["train.inner_steps=2", "eval.folds=3"])
    text = f.read_text()
    assert "# top comment" in text and "# steps" in text
    assert load_params(f).train.inner_steps == 2
    assert load_params(f).eval.folds == 3


def test_write_overrides_changes_only_the_overridden_values(tmp_path: Path) -> None:
    """On the repo's params.yaml every other byte stays: ``null``, flow lists, comments, long lines."""
    original = (REPO / "params.yaml").read_text()
    f = tmp_path / "params.yaml"
    f.write_text(original)
    saved = write_overrides(f, ["train.epochs=3", "train.hidden=[64, 32]"])
    assert saved == ["train.epochs=3", "train.hidden=[64, 32]"]
    expected = re.sub(r"^  epochs: \S+", "  epochs: 3", original, count=1, flags=re.M)
    expected = re.sub(r"^  hidden: \[128, 64\]", "  hidden: [64, 32] ", expected, count=1, flags=re.M)
    assert expected.count("\n") == original.count("\n") and expected != original
    assert f.read_bytes() == expected.encode()
    assert write_overrides(f, ["train.epochs=20", "train.hidden=[128, 64]"]) and f.read_text() == original


def test_config_files_set_keys_of_params_yaml(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        "data: {source: movielens-1m, name: ml-1m}\n"
        "features: {text_template: '{title}: {extra}'}\n"
        "eval:\n  protocol: melu_split\n  folds: 1\n  split_file: null\n  models: [linear_bias, meta]\n"
        "  melu: {max_ratings: 1000}\n"
    )
    overrides = overrides_from(config)
    assert overrides == [
        "data.source=movielens-1m",
        "data.name=ml-1m",
        "features.text_template='{title}: {extra}'",
        "eval.protocol=melu_split",
        "eval.folds=1",
        "eval.split_file=null",
        "eval.models=[linear_bias, meta]",
        "eval.melu.max_ratings=1000",
    ]
    params = load_params(REPO / "params.yaml", overrides)
    assert params.features.text_template == "{title}: {extra}"
    assert (params.eval.protocol, params.eval.folds, params.eval.models) == (
        "melu_split",
        1,
        ("linear_bias", "meta"),
    )
    assert params.eval.melu.max_ratings == 1000 and params.eval.melu.min_ratings == 13  # the rest kept
    with pytest.raises(ParamsError, match="not found"):
        overrides_from(tmp_path / "missing.yaml")


@pytest.mark.parametrize("config", sorted((REPO / "params").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(config: Path) -> None:
    load_params(REPO / "params.yaml", overrides_from(config))
