"""The model card: a markdown page logged with every registered version: what for, how good, from what."""

from __future__ import annotations

from typing import Any

from pipeline.params import Params

LIMITATIONS = (
    "Items are the ones known at training time: an item id outside the vocabulary is rejected, so new "
    "items need a retraining run (their text embedding then gives them meaning before anyone rates them).",
    "Quality was measured for brand-new users (`new_user`: held-out users showing a few ratings); other "
    "scenarios appear only where the evaluation reports them.",
    "User attributes (age, gender, occupation, zip region on MovieLens) are model inputs; their effect "
    "on different groups was not evaluated. Leave them out of a request to rank from ratings alone.",
    "Ratings are explicit stars on one catalogue; implicit feedback (clicks, watch time) is out of scope.",
    "Scores are predicted ratings clipped to the rating range, not calibrated probabilities.",
)


def _cell(value: Any) -> str:
    if isinstance(value, dict) and "mean" in value:
        std = value.get("std")
        return f"{value['mean']:.4f} ± {std:.4f}" if isinstance(std, int | float) else f"{value['mean']:.4f}"
    return f"{value:.4f}" if isinstance(value, int | float) else str(value)


def metrics_table(cv: dict[str, Any]) -> str:
    """One row per scenario and model, one column per metric (mean ± std over folds)."""
    rows = [(s, m, values) for s, models in cv["scenarios"].items() for m, values in models.items()]
    names = list(dict.fromkeys(name for _, _, values in rows for name in values))
    lines = ["| scenario | model | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for scenario, model, values in rows:
        cells = [_cell(values[n]) if n in values else "" for n in names]
        lines.append(f"| {scenario} | {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_card(
    params: Params,
    cv: dict[str, Any],
    vocab: dict[str, Any],
    lineage: dict[str, str],
    protocol: str,
    serving: dict[str, float | str],
) -> str:
    """The card of a version trained with ``params``, evaluated in ``cv``; ``serving`` holds the
    compression mode and its measured accuracy and latency beside the float model."""
    p, t = params, params.train
    adaptation = (
        f"a ridge solve of the user's bias and {t.foldin.factors} factors towards a learned prior: the "
        "meta-learned fold-in"
        + (
            "; the top-k order comes from its ranking head, an implicit fold-in of the items the user rated"
            if t.foldin.rank_weight > 0
            else ""
        )
        if t.model == "foldin"
        else f"{t.algorithm}, {t.inner_steps} inner steps on the `{t.adapt}` parameters of MeLU's MLP"
    )
    fields = ", ".join(vocab.get("user_fields", [])) or "none"
    serving_rows = "\n".join(f"| {key} | {_cell(value)} |" for key, value in serving.items())
    lineage_rows = "\n".join(f"| {key} | `{value}` |" for key, value in lineage.items())
    return (
        f"""# {p.register.model_name}: model card

## Intended use

Rating prediction and top-k recommendation for users the system has barely seen. A request carries one
user's few ratings (possibly none) and optional attributes ({fields}); the model adapts to them
({adaptation}) and ranks the candidate
items (default: every known item the user did not rate). Served with
`mlflow models serve -m models:/{p.register.model_name}@champion`.

## Data

| | |
|---|---|
| source | {p.data.source} ({p.data.name}) |
| users / items at training | {len(vocab.get("user_ids", []))} / {len(vocab.get("item_ids", []))} |
| rating range | {vocab.get("rating_min")} to {vocab.get("rating_max")} |
| item text encoder | {vocab.get("text_model", "unknown")} |

## Metrics

Cross-validated over users ({protocol}); every model saw the same folds and support sets.

{metrics_table(cv)}

## Serving

{"| | |"}
|---|---|
{serving_rows}

## Lineage

| | |
|---|---|
{lineage_rows}

## Limitations

"""
        + "\n".join(f"- {line}" for line in LIMITATIONS)
        + "\n"
    )
