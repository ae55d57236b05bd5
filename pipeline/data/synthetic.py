"""A seeded ratings generator with planted structure, for tests and smoke runs.

Users and items get latent factors; a rating is ``clip(round(global + b_u + b_i + u·v + noise), 1, 5)``.
User attributes (age, gender, occupation) and item genres, years, titles and descriptions are functions
of the same factors, so side information and item text carry real signal about the ratings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.data.schema import GENRE_SEPARATOR, ITEMS, RATINGS, SYNTHETIC_USERS, Tables, frame
from pipeline.params import SyntheticParams

GLOBAL_MEAN = 3.5
BIAS_STD = 0.3
START_TIME = 1_577_836_800  # 2020-01-01 UTC
DAY = 86_400
OCCUPATIONS = ("student", "engineer", "artist", "doctor", "teacher", "retired")
# genre → (title nouns, what a description says about it)
GENRES: dict[str, tuple[tuple[str, ...], str]] = {
    "Action": (
        ("Strike", "Fury", "Mission", "Pursuit"),
        "explosive chases, fist fights and a race against time",
    ),
    "Comedy": (("Wedding", "Mix-Up", "Holiday", "Roommates"), "awkward mix-ups, running gags and big laughs"),
    "Drama": (
        ("Letters", "Winter", "Inheritance", "Silence"),
        "family secrets, grief and a slow reconciliation",
    ),
    "Romance": (("Kiss", "Summer", "Promise", "Heart"), "two strangers falling in love against the odds"),
    "Horror": (("Cellar", "Curse", "Hollow", "Night"), "a haunted house, a curse and terrified teenagers"),
    "Sci-Fi": (
        ("Orbit", "Android", "Signal", "Colony"),
        "space travel, robots and first contact with aliens",
    ),
    "Documentary": (
        ("Voices", "Record", "Frontier", "Witness"),
        "real interviews and archive footage of history",
    ),
    "Animation": (("Critters", "Dragon", "Toybox", "Kingdom"), "talking animals, songs and a cartoon quest"),
}
TITLE_OPENERS = ("The Last", "Midnight", "Golden", "Broken", "Little", "Silent", "Endless", "Secret")


@dataclass(frozen=True)
class SyntheticData:
    """The generated tables plus the planted ground truth (row k of a factor matrix ↔ row k of its table)."""

    tables: Tables
    user_factors: np.ndarray
    item_factors: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray


def _unit_rows(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    directions = rng.normal(size=(n, k))
    return directions / np.linalg.norm(directions, axis=1, keepdims=True)


def generate_synthetic(params: SyntheticParams, seed: int) -> SyntheticData:
    """Same ``params`` and ``seed`` → identical tables."""
    rng = np.random.default_rng(seed)
    n_users, n_items, k = params.n_users, params.n_items, params.n_factors
    scale = k**-0.25  # so that u·v has unit variance
    user_factors = rng.normal(0.0, scale, (n_users, k))
    item_factors = rng.normal(0.0, scale, (n_items, k))
    user_bias = rng.normal(0.0, BIAS_STD, n_users)
    item_bias = rng.normal(0.0, BIAS_STD, n_items)

    genre_names = list(GENRES)
    genre_scores = item_factors @ _unit_rows(rng, len(genre_names), k).T
    ranked = np.argsort(-genre_scores, axis=1)
    first, second = ranked[:, 0], ranked[:, 1]
    has_second = genre_scores[np.arange(n_items), second] > 0.5 * genre_scores[np.arange(n_items), first]
    tone = item_factors[:, k - 1] / scale
    titles, descriptions, genres = [], [], []
    for i in range(n_items):
        main = genre_names[first[i]]
        picked = [main, genre_names[second[i]]] if has_second[i] else [main]
        nouns, about = GENRES[main]
        titles.append(f"{TITLE_OPENERS[rng.integers(len(TITLE_OPENERS))]} {nouns[rng.integers(len(nouns))]}")
        mood = "A dark, brooding" if tone[i] < 0 else "A warm, light-hearted"
        extra = f", with {GENRES[picked[1]][1]}" if len(picked) > 1 else ""
        descriptions.append(f"{mood} {main.lower()} film about {about}{extra}.")
        genres.append(GENRE_SEPARATOR.join(sorted(picked)))
    years = np.clip(np.rint(1995 + 12 * item_factors[:, 0] / scale + rng.normal(0, 4, n_items)), 1930, 2024)

    ages = np.clip(np.rint(35 + 10 * user_factors[:, 0] / scale + rng.normal(0, 4, n_users)), 16, 80)
    female = user_factors[:, 1] / scale + rng.normal(0, 0.3, n_users) > 0
    occupation_scores = user_factors @ _unit_rows(rng, len(OCCUPATIONS), k).T
    occupations = np.asarray(OCCUPATIONS)[np.argmax(occupation_scores, axis=1)]

    popularity = np.exp(item_bias / BIAS_STD * 0.5)
    popularity /= popularity.sum()
    user_rows, item_rows, times = [], [], []
    for u in range(n_users):
        n = int(rng.integers(params.min_ratings, params.max_ratings + 1))
        item_rows.append(rng.choice(n_items, size=n, replace=False, p=popularity))
        user_rows.append(np.full(n, u))
        start = START_TIME + int(rng.integers(0, 180)) * DAY
        times.append(start + np.cumsum(rng.exponential(DAY, n)).astype(np.int64))
    users_idx, items_idx = np.concatenate(user_rows), np.concatenate(item_rows)
    affinity = np.einsum("nk,nk->n", user_factors[users_idx], item_factors[items_idx])
    noise = rng.normal(0.0, params.noise, len(users_idx))
    ratings = np.clip(
        np.rint(GLOBAL_MEAN + user_bias[users_idx] + item_bias[items_idx] + affinity + noise), 1, 5
    )

    user_ids = np.asarray([f"u{u + 1:05d}" for u in range(n_users)])
    item_ids = np.asarray([f"i{i + 1:05d}" for i in range(n_items)])
    tables = Tables(
        ratings=frame(
            {
                "user_id": user_ids[users_idx],
                "item_id": item_ids[items_idx],
                "rating": ratings,
                "timestamp": np.concatenate(times),
            },
            RATINGS,
        ),
        users=frame(
            {
                "user_id": user_ids,
                "age": ages.astype(np.int64),
                "gender": np.where(female, "F", "M"),
                "occupation": occupations,
            },
            SYNTHETIC_USERS,
        ),
        items=frame(
            {
                "item_id": item_ids,
                "title": titles,
                "year": years.astype(np.int64),
                "genres": genres,
                "description": descriptions,
            },
            ITEMS,
        ),
    )
    return SyntheticData(tables, user_factors, item_factors, user_bias, item_bias)
