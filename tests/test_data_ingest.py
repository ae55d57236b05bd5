"""Ingest: GroupLens and RecBole atomic layouts, typed tables, and a DataError for every kind of bad input."""

from __future__ import annotations

import hashlib
import pickle
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipeline.data import DataError, ingest, load_tables, read_tables
from pipeline.data.movielens import ML100K_GENRES
from pipeline.params import Params, load_params
from pipeline.paths import Paths
from tests.reliability_cases import BY_FOLDER, CASES

DATA = Path(__file__).parent / "data"
FIXTURES = DATA / "fixtures"
BAD = DATA / "bad"
RATINGS_DTYPES = {"user_id": "str", "item_id": "str", "rating": "float64", "timestamp": "Int64"}
ITEM_CORE = ["item_id", "title", "year", "genres"]


def make_params(**data: object) -> Params:
    return Params.model_validate({"data": data})


def dtypes(df: pd.DataFrame) -> dict[str, str]:
    return {c: str(t) for c, t in df.dtypes.items()}


def test_ml100k_official_layout(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    counts = ingest(make_params(source="movielens-100k", path=str(FIXTURES / "ml-100k")), paths)
    assert counts == {"ratings": 15, "users": 5, "items": 6}
    tables = load_tables(paths)
    assert dtypes(tables.ratings) == RATINGS_DTYPES
    assert dtypes(tables.users) == {
        "user_id": "str",
        "age": "Int64",
        "gender": "str",
        "occupation": "str",
        "zip_code": "str",
    }
    assert dtypes(tables.items)["year"] == "Int64"
    assert tables.ratings.iloc[5].to_dict() == {
        "user_id": "2",
        "item_id": "6",
        "rating": 1.0,
        "timestamp": 881000300,
    }
    items = tables.items.set_index("item_id")
    assert items.loc["2", ["title", "year", "genres"]].tolist() == ["Café Müller", 1996, "Drama|Musical"]
    assert items.loc["3", "genres"] == "Animation|Children's|Sci-Fi"
    assert items.loc["4", "title"] == "Night Shift, The"
    assert items.loc["5", "title"] == "unknown" and pd.isna(items.loc["5", "year"])
    assert items.loc["5", "genres"] == "unknown"
    assert items.loc["6", ["title", "year"]].tolist() == ["Dust Riders", 1989]  # year from the release date
    assert items.loc["1", "imdb_url"] == "http://movies.example.org/title/1"
    assert pd.isna(items.loc["1", "video_release_date"])
    users = tables.users.set_index("user_id")
    assert users.loc["2", ["age", "gender", "occupation", "zip_code"]].tolist() == [
        41,
        "M",
        "artist",
        "02139",
    ]


def test_u_genre_names_the_genre_flags_and_the_standard_order_stands_in_for_it(tmp_path: Path) -> None:
    """The fixtures have no u.genre (GroupLens' own file is not ours to copy): the loader uses the
    standard 19 genres. A u.genre in reversed order, with u.item's flags reversed to match, gives each
    item the same genres (listed in the file's order), so the file's names and indexes are what the flags
    mean."""
    folder = tmp_path / "ml-100k"
    shutil.copytree(FIXTURES / "ml-100k", folder)
    n = len(ML100K_GENRES)
    (folder / "u.genre").write_text("".join(f"{ML100K_GENRES[n - 1 - i]}|{i}\n" for i in range(n)))
    lines = (folder / "u.item").read_text(encoding="latin-1").splitlines()
    fields = [line.split("|") for line in lines]
    reversed_flags = "".join("|".join(f[:-n] + f[-n:][::-1]) + "\n" for f in fields)
    (folder / "u.item").write_text(reversed_flags, encoding="latin-1")
    with_file = read_tables(make_params(path=str(folder)), Paths(tmp_path))
    standard = read_tables(make_params(path=str(FIXTURES / "ml-100k")), Paths(tmp_path))
    # the same genres per item, listed in the file's index order
    assert with_file.items["genres"].tolist() == [
        "|".join(reversed(g.split("|"))) for g in standard.items["genres"]
    ]
    columns = [c for c in standard.items.columns if c != "genres"]
    pd.testing.assert_frame_equal(with_file.items[columns], standard.items[columns])
    assert standard.items.set_index("item_id").loc["3", "genres"] == "Animation|Children's|Sci-Fi"


def test_atomic_layout_gives_the_same_tables_as_the_official_one(tmp_path: Path) -> None:
    official = read_tables(make_params(path=str(FIXTURES / "ml-100k")), Paths(tmp_path))
    atomic = read_tables(make_params(name="tiny", path=str(FIXTURES / "atomic")), Paths(tmp_path))
    pd.testing.assert_frame_equal(atomic.ratings, official.ratings)
    pd.testing.assert_frame_equal(atomic.users, official.users)
    # atomic item 5 has year "unknown", item 6 title "Dust Riders (1989)", year "V" (as in RecBole ml-100k)
    pd.testing.assert_frame_equal(atomic.items[ITEM_CORE], official.items[ITEM_CORE])
    assert list(atomic.items.columns) == ITEM_CORE


def test_ml1m_official_layout(tmp_path: Path) -> None:
    paths = Paths(tmp_path)
    counts = ingest(make_params(source="movielens-1m", path=str(FIXTURES / "ml-1m")), paths)
    assert counts == {"ratings": 12, "users": 4, "items": 5}
    tables = load_tables(paths)
    assert dtypes(tables.ratings) == RATINGS_DTYPES
    users = tables.users.set_index("user_id")
    assert users["occupation"].tolist() == ["technician/engineer", "retired", "college/grad student", "other"]
    assert users.loc["1", ["age", "gender", "zip_code"]].tolist() == [25, "F", "10001"]
    items = tables.items.set_index("item_id")
    assert items.loc["2", ["title", "year", "genres"]].tolist() == ["Café Müller", 1996, "Drama|Musical"]
    assert items.loc["5", ["title", "year"]].tolist() == ["Dust Riders", 1989]


def test_recbole_without_user_file_or_timestamps(tmp_path: Path) -> None:
    tables = read_tables(
        make_params(source="recbole", name="shop", path=str(FIXTURES / "recbole-min")), Paths(tmp_path)
    )
    assert tables.users.columns.tolist() == ["user_id"]
    assert tables.users["user_id"].tolist() == ["alice", "bob", "carol", "dave", "erin"]
    assert dtypes(tables.ratings) == RATINGS_DTYPES
    assert tables.ratings["timestamp"].isna().all()
    assert tables.ratings["rating"].tolist() == [5, 3, 4, 1.5, 2, 4, 5, 4, 3, 4.5]
    items = tables.items.set_index("item_id")
    assert items.columns.tolist() == ["title", "year", "genres", "brand", "price"]
    assert items.loc["sku-3"].tolist() == ["Rain Jacket", 2022, "outdoor|clothing", "Pace", "150.5"]
    assert dtypes(tables.items)["price"] == "str"


def test_atomic_user_attributes_are_typed_by_content(tmp_path: Path) -> None:
    tables = read_tables(make_params(name="tiny", path=str(FIXTURES / "atomic")), Paths(tmp_path))
    # age holds plain integers → Int64; zip codes stay text (leading zeros, letters)
    assert dtypes(tables.users) == {
        "user_id": "str",
        "age": "Int64",
        "gender": "str",
        "occupation": "str",
        "zip_code": "str",
    }


def test_ingest_leaves_raw_input_untouched_and_no_temp_files(tmp_path: Path) -> None:
    def digest() -> dict[str, str]:
        return {
            str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in FIXTURES.rglob("*") if p.is_file()
        }

    before = digest()
    paths = Paths(tmp_path)
    for layout, extra in (
        ("ml-100k", {}),
        ("ml-1m", {"source": "movielens-1m"}),
        ("atomic", {"name": "tiny"}),
    ):
        ingest(make_params(path=str(FIXTURES / layout), **extra), paths)
    assert digest() == before
    assert sorted(p.name for p in paths.ingested.iterdir()) == [
        "items.parquet",
        "origins.parquet",
        "ratings.parquet",
        "users.parquet",
    ]


def test_ingest_records_the_file_and_line_of_every_row(tmp_path: Path) -> None:
    """Row k of each table came from line origins[k] of the raw file (blank lines and headers skipped)."""
    folder = tmp_path / "atomic"
    shutil.copytree(FIXTURES / "atomic", folder)
    inter = folder / "tiny.inter"
    header, *rows = inter.read_text().splitlines()
    inter.write_text("\n".join([header, rows[0], "", *rows[1:]]) + "\n")  # a blank line 3
    paths = Paths(tmp_path / "project")
    counts = ingest(make_params(name="tiny", path=str(folder)), paths)
    origins = pd.read_parquet(paths.origins)
    ratings = origins[origins["table"] == "ratings"]
    assert ratings["row"].tolist() == list(range(counts["ratings"]))
    assert set(ratings["file"]) == {str(inter)}
    assert ratings["line"].tolist() == [2, *range(4, len(rows) + 3)]
    items = origins[origins["table"] == "items"]
    assert set(items["file"]) == {str(folder / "tiny.item")} and len(items) == counts["items"]


INGEST_CASES = {case.folder: case for case in CASES if case.stage == "ingest" and case.source != "archive"}


def test_every_bad_fixture_has_a_case() -> None:
    assert sorted(p.name for p in BAD.iterdir()) == sorted(BY_FOLDER)


@pytest.mark.parametrize("folder", sorted(INGEST_CASES))
def test_bad_input_raises_data_error_naming_file_row_column_rule(folder: str, tmp_path: Path) -> None:
    case = INGEST_CASES[folder]
    params = load_params(None, case.overrides())
    paths = Paths(tmp_path)
    with pytest.raises(DataError) as caught:
        ingest(params, paths)
    err = caught.value
    assert (Path(err.file).name, err.row, err.column) == (case.file, case.row, case.column)
    assert case.rule in err.rule
    assert str(err).startswith(case.location() + ": ")
    assert not paths.ingested.exists()  # nothing half-written


@pytest.mark.parametrize("folder", sorted(f for f, c in BY_FOLDER.items() if c.stage == "validate"))
def test_bad_rows_that_validate_rejects_are_ingested_as_they_are(folder: str, tmp_path: Path) -> None:
    counts = ingest(load_params(None, BY_FOLDER[folder].overrides()), Paths(tmp_path))
    assert counts["ratings"] in (13, 15)


def test_data_error_message_format_and_pickling() -> None:
    err = DataError("/x/ml-100k.inter", 7, "rating", "not a number ('abc')")
    assert str(err) == "ml-100k.inter line 7, column rating: not a number ('abc')"
    again = pickle.loads(pickle.dumps(err))
    assert (again.file, again.row, again.column, again.rule, str(again)) == (
        err.file,
        err.row,
        err.column,
        err.rule,
        str(err),
    )


def test_files_over_the_size_limit_are_refused(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match=r"u\.data: file is 240 bytes, larger than data\.max_file_mb=0\.0001 \(104"
    ):
        read_tables(make_params(path=str(FIXTURES / "ml-100k"), max_file_mb=0.0001), Paths(tmp_path))


def test_folder_without_known_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"found neither u\.data \(GroupLens layout\) nor ml-100k\.inter"):
        read_tables(make_params(path=str(tmp_path)), Paths(tmp_path))


def test_movielens_100k_from_the_mirror(
    data_mirror: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METAREC_DATA_MIRROR", str(data_mirror))
    paths = Paths(tmp_path)
    assert ingest(Params(), paths) == {"ratings": 100_000, "users": 943, "items": 1682}
    tables = load_tables(paths)
    assert dtypes(tables.ratings) == RATINGS_DTYPES
    assert tables.ratings.iloc[0].to_dict() == {
        "user_id": "196",
        "item_id": "242",
        "rating": 3.0,
        "timestamp": 881250949,
    }
    assert tables.ratings["rating"].value_counts().sort_index().tolist() == [6110, 11370, 27145, 34174, 21201]
    items = tables.items.set_index("item_id")
    assert items.loc["1", ["title", "year", "genres"]].tolist() == [
        "Toy Story",
        1995,
        "Animation|Children's|Comedy",
    ]
    assert items.loc["1412", ["title", "year"]].tolist() == [
        "Land Before Time III: The Time of the Great Giving",
        1995,
    ]
    assert pd.isna(items.loc["267", "year"])
    assert tables.items["year"].isna().sum() == 1
    users = tables.users.set_index("user_id")
    assert users.loc["1", ["age", "gender", "occupation", "zip_code"]].tolist() == [
        24,
        "M",
        "technician",
        "85711",
    ]
    again = read_tables(Params(), paths)
    pd.testing.assert_frame_equal(again.ratings, tables.ratings)
    pd.testing.assert_frame_equal(again.items, tables.items)


def test_movielens_1m_in_the_atomic_layout_has_the_grouplens_schema(tmp_path: Path) -> None:
    """ml-1m's RecBole files hold occupation codes, as users.dat does: they become the same names, and the
    users table passes the MovieLens schema; an unknown code names the .user file's line."""
    folder = tmp_path / "ml1m"
    shutil.copytree(FIXTURES / "atomic", folder)
    user = folder / "tiny.user"
    header, *rows = user.read_text().splitlines()
    codes = ["12", "0", "20", "4", "7", "1"]
    rows = [
        "\t".join([*r.split("\t")[:3], code, r.split("\t")[4]]) for r, code in zip(rows, codes, strict=False)
    ]
    user.write_text("\n".join([header, *rows]) + "\n")
    paths = Paths(tmp_path / "project")
    ingest(make_params(name="tiny", source="movielens-1m", path=str(folder)), paths)
    users = pd.read_parquet(paths.table("users"))
    assert users["occupation"].tolist()[:3] == ["programmer", "other", "writer"]
    assert {c: str(t) for c, t in users.dtypes.items()} == {
        "user_id": "str",
        "age": "Int64",
        "gender": "str",
        "occupation": "str",
        "zip_code": "str",
    }
    user.write_text("\n".join([header, *rows[:2], rows[2].replace("\t20\t", "\t21\t")]) + "\n")
    with pytest.raises(DataError, match=r"^tiny.user line 4, column occupation: unknown occupation code 21$"):
        ingest(make_params(name="tiny", source="movielens-1m", path=str(folder)), paths)


def test_every_line_breaking_a_value_rule_is_named_at_once(tmp_path: Path) -> None:
    """Three unparsable ratings: one error names the first line and lists the other two."""
    folder = tmp_path / "atomic"
    shutil.copytree(FIXTURES / "atomic", folder)
    inter = folder / "tiny.inter"
    header, *rows = inter.read_text().splitlines()
    for k, word in ((2, "abc"), (5, "x"), (9, "n/a")):
        fields = rows[k].split("\t")
        rows[k] = "\t".join([*fields[:2], word, *fields[3:]])
    inter.write_text("\n".join([header, *rows]) + "\n")
    with pytest.raises(DataError) as caught:
        read_tables(make_params(name="tiny", path=str(folder)), Paths(tmp_path))
    assert str(caught.value) == "tiny.inter line 4, column rating: not a number ('abc'); also lines 7, 11"
