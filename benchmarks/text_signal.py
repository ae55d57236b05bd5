"""How much can an item's text say about its ratings beyond its genres? An upper-bound style check for the
``new_item`` scenario, independent of the meta-learner.

    python benchmarks/text_signal.py --features data/features --json benchmarks/results/text_signal.json

Items are split into ``--folds`` seeded folds; per fold, user and item biases are fitted on the ratings of
the other folds' items (alternating ridge updates), and the held-out items' biases are predicted from
their content by weighted ridge regression on the training items' biases, with the features

- ``none``: no item term (global mean + user bias),
- ``attributes``: genres (multi-hot) and the categorical item codes (one-hot): what ``meta_no_text`` sees,
- ``text``: the language-model embedding of the item text,
- ``text+attributes``: both: what ``meta`` sees.

The printed MAE is over the held-out items' ratings, clipped to the rating range. The gap between
``attributes`` and ``text+attributes`` bounds what text adds for a new item with a linear read-out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.features.store import FeatureSet, load_feature_set  # noqa: E402
from pipeline.io import write_json  # noqa: E402

REG_USER, REG_ITEM = 5.0, 10.0  # pseudo-ratings shrinking the biases towards 0
SWEEPS = 10


def biases(
    user: np.ndarray, item: np.ndarray, rating: np.ndarray, n_users: int, n_items: int
) -> tuple[float, np.ndarray, np.ndarray]:
    """Global mean, user and item biases of the ratings (ridge, alternating closed-form updates)."""
    mu = float(rating.mean())
    b_user, b_item = np.zeros(n_users), np.zeros(n_items)
    n_u = np.bincount(user, minlength=n_users) + REG_USER
    n_i = np.bincount(item, minlength=n_items) + REG_ITEM
    for _ in range(SWEEPS):
        b_item = np.bincount(item, rating - mu - b_user[user], n_items) / n_i
        b_user = np.bincount(user, rating - mu - b_item[item], n_users) / n_u
    return mu, b_user, b_item


def ridge(x: np.ndarray, target: np.ndarray, weight: np.ndarray, lam: float) -> np.ndarray:
    """Weighted ridge regression with an unpenalised intercept (last coefficient)."""
    xc = np.c_[x, np.ones(len(x))]
    a = xc.T @ (xc * weight[:, None]) + lam * np.eye(xc.shape[1])
    a[-1, -1] -= lam
    return np.linalg.solve(a, xc.T @ (weight * target))


def content(fs: FeatureSet) -> dict[str, np.ndarray | None]:
    cats = [np.eye(int(c.max()) + 1)[c] for c in fs.item_cats.T.astype(np.int64)]
    attributes = np.concatenate([fs.item_multi, *cats], axis=1)
    return {
        "none": None,
        "attributes": attributes,
        "text": fs.item_text,
        "text+attributes": np.concatenate([fs.item_text, attributes], axis=1),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", type=Path, default=Path("data/features"), help="feature set folder")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ridge", type=float, nargs="+", default=[1.0, 10.0, 100.0], help="penalties tried")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args(argv)

    fs = load_feature_set(args.features)
    user = np.asarray(fs.ratings["user_index"], dtype=np.int64)
    item = np.asarray(fs.ratings["item_index"], dtype=np.int64)
    rating = np.asarray(fs.ratings["rating"], dtype=np.float64)
    lo, hi = float(rating.min()), float(rating.max())
    fold_of_item = np.random.default_rng(args.seed).permutation(fs.n_items) % args.folds
    mae: dict[str, list[float]] = {}
    for fold in range(args.folds):
        train = fold_of_item[item] != fold
        mu, b_user, b_item = biases(user[train], item[train], rating[train], fs.n_users, fs.n_items)
        count = np.bincount(item[train], minlength=fs.n_items)
        known = np.flatnonzero(count > 0)
        # the item's unshrunk mean residual, weighted by sqrt(count): noisy items count less
        target = b_item[known] * (count[known] + REG_ITEM) / count[known]
        base = mu + b_user[user[~train]]
        for name, x in content(fs).items():
            for lam in args.ridge if x is not None else [0.0]:
                pred = base
                if x is not None:
                    coef = ridge(x[known], target, np.sqrt(count[known]), lam)
                    pred = base + (np.c_[x, np.ones(fs.n_items)] @ coef)[item[~train]]
                key = name if x is None else f"{name} ridge={lam:g}"
                mae.setdefault(key, []).append(float(np.abs(rating[~train] - np.clip(pred, lo, hi)).mean()))
    rows = {
        key: {"mae": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "per_fold": v}
        for key, v in mae.items()
    }
    best = {
        name: min((v["mae"] for k, v in rows.items() if k == name or k.startswith(f"{name} ")), default=None)
        for name in content(fs)
    }
    out = {
        "command": " ".join(["python benchmarks/text_signal.py", *(sys.argv[1:] if argv is None else argv)]),
        "text_model": fs.vocab.get("text_model"),
        "folds": args.folds,
        "results": rows,
        "best": best,
    }
    for key, v in rows.items():
        print(f"{key:28s} MAE {v['mae']:.4f} ± {v['std']:.4f}")
    if best["attributes"] and best["text+attributes"]:
        gain = (best["attributes"] - best["text+attributes"]) / best["attributes"]
        out["text_gain_over_attributes"] = gain
        print(f"text over attributes: {100 * gain:.2f} % lower MAE (best penalties)")
    if args.json is not None:
        write_json(out, args.json)
    return out


if __name__ == "__main__":
    main()
