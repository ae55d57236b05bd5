"""Item text for the sentence encoder, rendered from ``features.text_template``.

A template such as ``"{title} ({year}). Genres: {genres}. {extra}"`` is split into one slot per field:
the literal around a field belongs to it (``"("`` and ``")"`` to ``{year}``, ``"Genres: "`` to
``{genres}``), and what remains between two slots is their separator. A missing field drops its whole
slot, so no item ever reads ``"()"``, ``"nan"`` or ``"Genres: ."``.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

EXTRA = "extra"
STANDARD_FIELDS = ("title", "year", "genres")
GENRE_SEPARATOR = "|"

_CLOSERS = ")]}\"'»"
_SLOT_START = re.compile(r"""[\w(\[{"'«].*""", re.DOTALL)
_SENTENCE_END = ".!?"


@dataclass(frozen=True)
class _Slot:
    prefix: str
    field: str
    spec: str
    suffix: str


@dataclass(frozen=True)
class ParsedTemplate:
    """Slots in template order and the separator in front of each slot (empty for the first)."""

    slots: tuple[_Slot, ...]
    separators: tuple[str, ...]

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(s.field for s in self.slots)


def parse_template(template: str) -> ParsedTemplate:
    """Split ``template`` into field slots; raise on positional, attribute or missing fields."""
    try:
        parts = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ValueError(f"features.text_template {template!r}: {exc}") from None
    literals = [lit for lit, _, _, _ in parts]
    fields = [(name, spec or "") for _, name, spec, _ in parts if name is not None]
    if not fields:
        raise ValueError(f"features.text_template {template!r}: names no field, e.g. {{title}}")
    for name, _ in fields:
        if not name.isidentifier():
            raise ValueError(
                f"features.text_template {template!r}: field {{{name}}} must be a column name or {{extra}}"
            )
    if len(literals) == len(fields):
        literals.append("")
    prefixes, suffixes, separators = [literals[0]], [], [""]
    for between in literals[1:-1]:
        rest = between.lstrip(_CLOSERS)
        sep = _SLOT_START.sub("", rest, count=1)
        suffixes.append(between[: len(between) - len(rest)])
        separators.append(sep)
        prefixes.append(rest[len(sep) :])
    suffixes.append(literals[-1])
    slots = tuple(
        _Slot(prefix, name, spec, suffix)
        for (name, spec), prefix, suffix in zip(fields, prefixes, suffixes, strict=True)
    )
    return ParsedTemplate(slots, tuple(separators))


def _glue(text: str, literal: str) -> str:
    """Append ``literal``, dropping a leading punctuation mark that ``text`` already ends with."""
    mark = literal[:1]
    doubled = mark in ".,;:" and text.endswith(mark)
    if mark and (doubled or (mark == "." and text[-1:] in tuple(_SENTENCE_END))):
        literal = literal[1:]
    return text + literal


def _clean(value: Any, spec: str = "") -> str | None:
    """A field value as one line of text, or None when missing or empty."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer() and not spec:
        value = int(value)
    text = " ".join(format(value, spec).split())
    return text or None


def _genres(value: Any) -> str | None:
    text = _clean(value)
    if text is None:
        return None
    names = [g.strip() for g in text.split(GENRE_SEPARATOR)]
    return ", ".join(g for g in names if g) or None


def extra_columns(items: pd.DataFrame, template: str) -> list[str]:
    """Text columns that ``{extra}`` renders: every str column not named elsewhere (in frame order)."""
    named = set(parse_template(template).fields) | set(STANDARD_FIELDS) | {"item_id"}
    return [c for c in items.columns if c not in named and pd.api.types.is_string_dtype(items[c])]


def render(parsed: ParsedTemplate, values: dict[str, str | None]) -> str:
    """Fill the slots whose value is present, joined by the separator in front of each present slot."""
    text = ""
    for slot, sep in zip(parsed.slots, parsed.separators, strict=True):
        value = values.get(slot.field)
        if value is None:
            continue
        if text:
            text = _glue(text, sep)
        text = _glue(text + slot.prefix + value, slot.suffix)
    return text.strip()


def item_texts(items: pd.DataFrame, template: str) -> list[str]:
    """One text per row of ``items`` (same order).

    ``{genres}`` is rendered comma-separated, ``{extra}`` as ``"column: value"`` sentences; ``title``,
    ``year`` and ``genres`` may be absent from the frame, any other field must be a column.
    """
    parsed = parse_template(template)
    for name in parsed.fields:
        if name != EXTRA and name not in STANDARD_FIELDS and name not in items.columns:
            raise ValueError(
                f"features.text_template {template!r}: field {{{name}}} is not a column of items "
                f"(columns: {', '.join(map(str, items.columns))})"
            )
    extras = extra_columns(items, template) if EXTRA in parsed.fields else []
    specs = {s.field: s.spec for s in parsed.slots}
    columns = {
        name: items[name].tolist() if name in items.columns else [None] * len(items)
        for name in parsed.fields
        if name != EXTRA
    }
    extra_values = {c: items[c].tolist() for c in extras}
    texts = []
    for row in range(len(items)):
        values: dict[str, str | None] = {
            name: _genres(col[row]) if name == "genres" else _clean(col[row], specs[name])
            for name, col in columns.items()
        }
        if EXTRA in parsed.fields:
            values[EXTRA] = _join_sentences(
                [f"{c}: {v}" for c in extras if (v := _clean(extra_values[c][row])) is not None]
            )
        texts.append(render(parsed, values))
    return texts


def _join_sentences(sentences: Sequence[str]) -> str | None:
    text = ""
    for sentence in sentences:
        text = _glue(text, ". ") + sentence if text else sentence
    return text or None
