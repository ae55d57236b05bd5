"""Item text rendering: missing fields drop their whole slot, against hand-written strings."""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.features.text import extra_columns, item_texts, parse_template

TEMPLATE = "{title} ({year}). Genres: {genres}. {extra}"


def _items(**columns: list) -> pd.DataFrame:
    n = len(next(iter(columns.values())))
    frame = {"item_id": pd.array([str(i) for i in range(n)], dtype="str")}
    for name, values in columns.items():
        frame[name] = pd.array(values, dtype="Int64" if name == "year" else "str")
    return pd.DataFrame(frame)


def test_full_row_and_genres_comma_separated() -> None:
    items = _items(title=["Toy Story"], year=[1995], genres=["Animation|Children's|Comedy"])
    assert item_texts(items, TEMPLATE) == ["Toy Story (1995). Genres: Animation, Children's, Comedy"]


@pytest.mark.parametrize(
    ("year", "genres", "expected"),
    [
        (None, "Drama|War", "Paths of Glory. Genres: Drama, War"),
        (1957, None, "Paths of Glory (1957)"),
        (1957, "", "Paths of Glory (1957)"),
        (1957, "|", "Paths of Glory (1957)"),
        (None, None, "Paths of Glory"),
    ],
)
def test_missing_year_or_genres_leave_no_debris(year: int | None, genres: str | None, expected: str) -> None:
    items = _items(title=["Paths of Glory"], year=[year], genres=[genres])
    assert item_texts(items, TEMPLATE) == [expected]


def test_extra_columns_as_sentences_skipping_nulls() -> None:
    items = _items(
        title=["Toy Story", "Heat", "Alien"],
        year=[1995, None, 1979],
        genres=["Animation", "Crime|Thriller", None],
        plot=["A cowboy doll is threatened by a new toy.", None, "  In space\nno one hears. "],
        director=["John Lasseter", None, None],
    )
    assert item_texts(items, TEMPLATE) == [
        "Toy Story (1995). Genres: Animation. plot: A cowboy doll is threatened by a new toy. "
        "director: John Lasseter",
        "Heat. Genres: Crime, Thriller",
        "Alien (1979). plot: In space no one hears.",
    ]


def test_columns_absent_from_the_frame_are_missing() -> None:
    items = pd.DataFrame({"item_id": ["1"], "title": ["Up"]})
    assert item_texts(items, TEMPLATE) == ["Up"]


def test_title_ending_in_period_is_not_doubled() -> None:
    items = _items(
        title=["Dr. Strangelove or: How I Learned to Love the Bomb."], year=[None], genres=["Comedy"]
    )
    assert item_texts(items, TEMPLATE) == [
        "Dr. Strangelove or: How I Learned to Love the Bomb. Genres: Comedy"
    ]


def test_other_template_named_column_leaves_extra() -> None:
    items = _items(title=["Heat", "Up"], director=["Michael Mann", None], plot=["Cops.", "Balloons."])
    template = "{title} by {director}. {extra}"
    assert extra_columns(items, template) == ["plot"]
    assert item_texts(items, template) == ["Heat by Michael Mann. plot: Cops.", "Up. plot: Balloons."]


def test_template_slots() -> None:
    parsed = parse_template(TEMPLATE)
    assert parsed.fields == ("title", "year", "genres", "extra")
    assert [(s.prefix, s.suffix) for s in parsed.slots] == [("", ""), ("(", ")"), ("Genres: ", ""), ("", "")]
    assert parsed.separators == ("", " ", ". ", ". ")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{title} {plot}", r"field \{plot\} is not a column"),
        ("plain", "names no field"),
        ("{0}", "column name"),
    ],
)
def test_bad_templates_are_named(template: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        item_texts(_items(title=["Up"]), template)
