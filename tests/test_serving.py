"""The champion behind ``mlflow models serve``: one real server for the module, on 127.0.0.1.

A registered champion (trained on planted tastes) answers ``POST /invocations`` with a top-k per new
user that follows that user's ratings; every malformed request gets a 4xx whose body names the problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.registry_fixtures import (
    A_USER,
    B_USER,
    LIKES_A,
    item_id,
    model_server,
    post,
    registered_champion,
    title,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``/invocations`` of ``models:/metarec@champion``, registered by the register stage."""
    root = tmp_path_factory.mktemp("serving")
    registration = registered_champion(root)
    with model_server("models:/metarec@champion", registration["tracking_uri"], root / "serve.log") as url:
        yield f"{url}/invocations"


def invoke(url: str, payload: object) -> tuple[int, dict]:
    status, text = post(url, json.dumps(payload).encode())
    return status, json.loads(text)


def test_new_users_get_their_own_top_10(server: str) -> None:
    """Five ratings are enough to tell the two planted tastes apart."""
    status, body = invoke(
        server,
        {
            "inputs": [
                {"user_id": "u-new-a", "ratings": A_USER[:5]},
                {"user_id": "u-new-b", "ratings": B_USER[:5], "k": 10},
            ]
        },
    )
    assert status == 200, body
    a, b = body["predictions"]
    for answer, rated in ((a, A_USER[:5]), (b, B_USER[:5])):
        assert len(answer["items"]) == len(answer["scores"]) == 10
        assert answer["scores"] == sorted(answer["scores"], reverse=True)
        assert not set(answer["items"]) & {r["item_id"] for r in rated}
    assert a["items"] != b["items"] and a["scores"] != b["scores"]
    liked_by_a = {item_id(i) for i in LIKES_A}
    assert sum(i in liked_by_a for i in a["items"]) > sum(i in liked_by_a for i in b["items"])


def test_the_readme_request_shape_and_candidates(server: str) -> None:
    status, body = invoke(
        server, {"inputs": [{"user_id": "u-new", "ratings": [{"item_id": "1005", "rating": 5}], "k": 3}]}
    )
    assert status == 200 and len(body["predictions"][0]["items"]) == 3
    wanted = [item_id(i) for i in (3, 17, 20)]
    status, body = invoke(server, {"inputs": [{"user_id": "x", "ratings": [], "candidates": wanted}]})
    assert status == 200 and sorted(body["predictions"][0]["items"]) == sorted(wanted)


VALID = {"user_id": "u", "ratings": A_USER[:2]}
MALFORMED: list[tuple[str, bytes, str, str]] = [
    ("not JSON", b"{user_id: u}", "application/json", "valid JSON"),
    ("empty body", b"", "application/json", "valid JSON"),
    ("not UTF-8", b'{"inputs": "\xff"}', "application/json", "valid JSON"),
    ("a list, not an object", json.dumps([VALID]).encode(), "application/json", "Received a list"),
    ("no inputs", b"{}", "application/json", "inputs"),
    ("dataframe format", json.dumps({"dataframe_records": [VALID]}).encode(), "application/json", "inputs"),
    ("inputs not a list", json.dumps({"inputs": "u"}).encode(), "application/json", "list"),
    ("request not an object", json.dumps({"inputs": [1]}).encode(), "application/json", "Expected dict"),
    ("CSV", b"user_id,ratings\nu,[]", "text/csv", "Failed"),
    ("plain text", b"hello", "text/plain", "content types"),
]
REJECTED_BY_THE_MODEL: list[tuple[str, dict, str]] = [
    ("user_id missing", {"ratings": []}, "request 0: user_id: required"),
    ("ratings missing", {"user_id": "u"}, "request 0: ratings: required"),
    ("ratings not a list", {**VALID, "ratings": "five stars"}, "ratings: expected a list (got 'five stars')"),
    ("rating missing", {**VALID, "ratings": [{"item_id": "1000"}]}, "request 0: ratings[0].rating: required"),
    (
        "rating as text",
        {**VALID, "ratings": [{"item_id": "1000", "rating": "5"}]},
        "expected a number (got '5')",
    ),
    (
        "item_id a number",
        {**VALID, "ratings": [{"item_id": 1000, "rating": 5}]},
        "item_id: expected a string",
    ),
    ("k as text", {**VALID, "k": "ten"}, "request 0: k: expected an integer (got 'ten')"),
    ("k a fraction", {**VALID, "k": 2.5}, "request 0: k: expected an integer (got 2.5)"),
    ("k zero", {**VALID, "k": 0}, "request 0: k: must be > 0 (got 0)"),
    ("k negative", {**VALID, "k": -4}, "request 0: k: must be > 0 (got -4)"),
    (
        "misspelt field",
        {**VALID, "canidates": ["1000"]},
        "request 0: canidates: unknown field (known: user_id",
    ),
    ("unknown item", {**VALID, "ratings": [{"item_id": "50", "rating": 4}]}, "ratings[0].item_id: unknown"),
    ("rating too high", {**VALID, "ratings": [{"item_id": "1000", "rating": 6}]}, "ratings[0].rating: must"),
    ("rating too low", {**VALID, "ratings": [{"item_id": "1000", "rating": 0}]}, "within [1, 5] (got 0"),
    ("item rated twice", {**VALID, "ratings": A_USER[:1] * 2}, "ratings[1].item_id: item id '1000' appears"),
    ("unknown candidate", {**VALID, "candidates": ["1000", "nope"]}, "candidates[1]: unknown item id 'nope'"),
    ("candidates not a list", {**VALID, "candidates": "1000"}, "candidates: expected a list (got '1000')"),
    ("unknown attribute", {**VALID, "attributes": {"shoe": 44}}, "attributes.shoe: unknown user attribute"),
    (
        "attribute a list",
        {**VALID, "attributes": {"age": [30]}},
        "attributes.age: expected a number (got [30])",
    ),
    (
        "unknown gender",
        {**VALID, "attributes": {"gender": "X"}},
        "attributes.gender: unknown value 'X' (known: F, M)",
    ),
    (
        "unknown occupation",
        {**VALID, "attributes": {"occupation": "astronaut"}},
        "attributes.occupation: unknown value 'astronaut' (known: artist, doctor, student)",
    ),
]
"""Requests that reach the model, each rejected by it with one line naming the request and the field."""
for field, request, reason in REJECTED_BY_THE_MODEL:
    MALFORMED.append((field, json.dumps({"inputs": [request]}).encode(), "application/json", reason))


@pytest.mark.parametrize(
    ("body", "content_type", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_request_gets_a_4xx_naming_the_problem(
    server: str, body: bytes, content_type: str, reason: str
) -> None:
    status, text = post(server, body, content_type)
    assert 400 <= status < 500, (status, text)
    message = json.loads(text)["message"] if text.startswith("{") else text
    assert reason in message, message


@pytest.mark.parametrize(
    "request_body", [r[1] for r in REJECTED_BY_THE_MODEL], ids=[r[0] for r in REJECTED_BY_THE_MODEL]
)
def test_the_answer_to_a_bad_request_is_one_short_line(server: str, request_body: dict) -> None:
    """Only the reason: not the request quoted back, not a pydantic report."""
    status, text = post(server, json.dumps({"inputs": [request_body]}).encode())
    answer = json.loads(text)
    assert status == 400 and answer["error_code"] == "INVALID_PARAMETER_VALUE"
    assert answer["message"].startswith("request 0: ") and "\n" not in answer["message"]
    assert len(text) < 200, text


def test_titles_when_asked(server: str) -> None:
    request = {"user_id": "u", "ratings": A_USER[:3], "k": 3}
    status, body = invoke(server, {"inputs": [request, {**request, "titles": True}]})
    assert status == 200, body
    plain, titled = body["predictions"]
    assert set(plain) == {"items", "scores"} and titled["items"] == plain["items"]
    assert titled["titles"] == [title(int(i) - 1000) for i in titled["items"]]


def test_a_bad_request_in_a_batch_rejects_the_batch_naming_its_position(server: str) -> None:
    bad = {**VALID, "k": 0}
    status, body = invoke(server, {"inputs": [VALID, VALID, bad]})
    assert status == 400 and "request 2: k: must be > 0" in body["message"]
    status, body = invoke(server, {"inputs": [VALID]})  # the server is fine afterwards
    assert status == 200
