"""The sentence encoder (the real offline all-MiniLM-L6-v2) and its append-only embedding cache."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pipeline.features.encoder import (
    DEFAULT_MODEL,
    EncoderUnavailableError,
    encode_texts,
    load_model,
    model_identity,
    model_slug,
)

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "Toy Story (1995). Genres: Animation",
    "Heat (1995). Genres: Crime",
    "Toy Story (1995). Genres: Animation",
]


def test_vectors_are_unit_384d_and_identical_texts_share_one(tmp_path: Path) -> None:
    vectors, n_encoded = encode_texts(TEXTS, "all-MiniLM-L6-v2", tmp_path, batch_size=2, device="cpu")
    assert n_encoded == 2
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert not np.allclose(vectors[0], vectors[1])
    reference = load_model(DEFAULT_MODEL, "cpu").encode(TEXTS[:2], normalize_embeddings=True)
    np.testing.assert_allclose(vectors[:2], reference, atol=1e-5)


def test_cache_hit_encodes_nothing_and_a_changed_text_exactly_one(tmp_path: Path) -> None:
    first, n_first = encode_texts(TEXTS, "all-MiniLM-L6-v2", tmp_path, device="cpu")
    again, n_again = encode_texts(TEXTS, DEFAULT_MODEL, tmp_path, device="cpu")
    assert (n_first, n_again) == (2, 0)
    np.testing.assert_array_equal(first, again)
    changed = [TEXTS[0], "Heat (1995). Genres: Crime, Thriller", TEXTS[2]]
    third, n_third = encode_texts(changed, DEFAULT_MODEL, tmp_path, device="cpu")
    assert n_third == 1
    np.testing.assert_array_equal(third[0], first[0])
    shards = sorted((tmp_path / model_slug(DEFAULT_MODEL)).glob("*.npz"))
    assert len(shards) == 2
    with np.load(shards[0]) as a, np.load(shards[1]) as b:
        assert sorted([a["keys"].size, b["keys"].size]) == [1, 2]
        assert a["vectors"].shape[1] == b["vectors"].shape[1] == 384


def test_cache_hit_never_imports_sentence_transformers(tmp_path: Path) -> None:
    encode_texts(TEXTS, DEFAULT_MODEL, tmp_path, device="cpu")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from pipeline.features.encoder import encode_texts
        vectors, n = encode_texts({TEXTS!r}, {DEFAULT_MODEL!r}, Path({str(tmp_path)!r}), device="cuda")
        assert n == 0 and vectors.shape == (3, 384), (n, vectors.shape)
        assert "sentence_transformers" not in sys.modules
        """
    )
    # device="cuda" would fail on a CPU machine if the model were loaded.
    subprocess.run([sys.executable, "-c", script], cwd=REPO, check=True)


def test_identity_and_slug(tmp_path: Path) -> None:
    assert model_identity("all-MiniLM-L6-v2") == model_identity(DEFAULT_MODEL) == DEFAULT_MODEL
    assert model_identity(str(tmp_path)) == str(tmp_path.resolve())
    assert model_identity("org/other-model") == "org/other-model"
    slug = model_slug(DEFAULT_MODEL)
    assert slug.startswith("sentence-transformers_all-MiniLM-L6-v2-") and "/" not in slug
    assert model_slug("a/b") != model_slug("a_b")


def test_missing_model_says_what_to_set(tmp_path: Path) -> None:
    with pytest.raises(EncoderUnavailableError, match=r"features\.text_encoder.*HF_HUB_OFFLINE"):
        encode_texts(["x"], str(tmp_path / "no-such-model"), tmp_path / "cache", device="cpu")


def test_cuda_without_a_gpu_is_a_clear_error(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(EncoderUnavailableError, match=r"features\.device=cuda"):
        encode_texts(["x"], DEFAULT_MODEL, tmp_path, device="cuda")
