"""The evaluation's human-readable outputs: the table the CLI prints, ``report.md`` with PNG figures, and
the DVC plot data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from pipeline.evaluation.splits import SCENARIO_NAMES
from pipeline.io import atomic_dir

META_MODEL = "meta"
"""Drawn on top in the support-size figure."""
SCENARIOS_PNG = "scenarios.png"
SHOTS_PNG = "shots.png"
TABLE_METRICS = ("mae", "rmse", "auc", "ndcg@", "recall@", "ndcg_all@", "hr@")


def _metric_of(cv: dict[str, Any]) -> str:
    return "auc" if cv["task"] == "implicit" else "mae"


def _seeds_note(cv: dict[str, Any]) -> str:
    seeded = cv.get("seeded_models", [])
    return f"seeds={cv.get('seeds', 1)} ({', '.join(seeded) if seeded else 'no seeded model'})"


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def _interval(values: list[float] | None, signed: bool = True) -> str:
    if values is None:
        return "n/a"
    spec = "+.4f" if signed else ".4f"
    return f"[{values[0]:{spec}}, {values[1]:{spec}}]"


def _difference(t: dict[str, Any]) -> str:
    """One entry of ``cv["tests"]``: the mean difference and its interval, ``-0.0050 [-0.0090, -0.0010]``."""
    diff = "n/a" if t["mean_difference"] is None else f"{t['mean_difference']:+.4f}"
    return f"{diff} {_interval(t['difference_ci95'])}"


def _tests(cv: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(s, b, t) for s, by_baseline in cv.get("tests", {}).items() for b, t in by_baseline.items()]


def _family(tests: list[tuple[str, str, dict[str, Any]]]) -> int:
    """How many tests Holm's correction counts: those with a p-value."""
    return sum(t["p_value"] is not None for _, _, t in tests)


def format_table(cv: dict[str, Any], metrics: tuple[str, ...] | None = None) -> str:
    """The CV metrics as a fixed-width table: one row per scenario and model, ``mean ± std`` over folds per
    metric, then meta against every baseline. ``metrics``: these columns (default: MAE, RMSE, AUC, nDCG,
    recall and HR; the report has them all)."""
    header = (
        f"{cv['protocol']}: {cv['folds']} folds, task={cv.get('task', 'explicit')}, "
        f"support_size={cv['support_size']}, seed={cv['seed']}, {_seeds_note(cv)}, "
        f"weighting={cv.get('weighting', 'rows')}"
    )
    rows = [
        (scenario, model, values)
        for scenario, models in cv["scenarios"].items()
        for model, values in models.items()
    ]
    present = dict.fromkeys(m for _, _, values in rows for m in values)
    names = list(metrics or (m for m in present if m.startswith(TABLE_METRICS)))
    cells = [["scenario", "model", *names]]
    for scenario, model, values in rows:
        shown = [f"{values[n]['mean']:.4f} ± {values[n]['std']:.4f}" if n in values else "" for n in names]
        cells.append([scenario, model, *shown])
    widths = [max(len(row[c]) for row in cells) for c in range(len(cells[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    tests = _tests(cv)
    if tests:
        first = tests[0][2]
        lines.append(
            f"meta - baseline, {first['metric']} per user, mean [95% bootstrap CI over users]; one-sided "
            f"{first['test']} ({first['alternative']}); p_holm: Holm over the {_family(tests)} tests with a p"
        )
        for scenario, baseline, t in tests:
            lines.append(
                f"{scenario} vs {baseline}: {_difference(t)} p={_p(t['p_value'])} "
                f"p_holm={_p(t['p_holm'])} ({t['n_users']} users)"
            )
    return "\n".join([header, *lines])


def headline(cv: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """``{metric: {scenario: {model: mean}}}`` of the primary metric (MAE; implicit task: AUC): the DVC
    metric ``dvc metrics show`` prints (the whole evaluation stays in ``metrics/cv.json``)."""
    metric = _metric_of(cv)
    return {
        metric: {
            scenario: {model: round(m[metric]["mean"], 4) for model, m in models.items() if metric in m}
            for scenario, models in cv["scenarios"].items()
        }
    }


def scenario_plot_rows(cv: dict[str, Any], scenario: str) -> list[dict[str, Any]]:
    """``[{"model", "metric", "value", "ci_low", "ci_high"}]`` of the primary metric (MAE; implicit task:
    AUC) in ``scenario``, one row per model that has it, for a DVC bar plot."""
    metric = _metric_of(cv)
    rows = []
    for model, metrics in cv["scenarios"].get(scenario, {}).items():
        if metric in metrics:
            agg = metrics[metric]
            rows.append(
                {
                    "model": model,
                    "metric": metric,
                    "value": agg["mean"],
                    "ci_low": agg["ci95"][0],
                    "ci_high": agg["ci95"][1],
                }
            )
    return rows


def _scenarios_figure(cv: dict[str, Any], path: Path) -> None:
    metric = _metric_of(cv)
    fig = Figure(figsize=(4 * len(SCENARIO_NAMES), 4), layout="constrained")
    axes = fig.subplots(1, len(SCENARIO_NAMES))
    for ax, scenario in zip(axes, SCENARIO_NAMES, strict=True):
        rows = scenario_plot_rows(cv, scenario)
        names = [r["model"] for r in rows]
        means = [r["value"] for r in rows]
        err = [[r["value"] - r["ci_low"] for r in rows], [r["ci_high"] - r["value"] for r in rows]]
        ax.errorbar(means, range(len(rows)), xerr=err, fmt="o", color="tab:blue", ecolor="black", capsize=3)
        ax.grid(axis="x", alpha=0.3)
        ax.set_yticks(range(len(rows)), names)
        ax.invert_yaxis()
        ax.set_title(scenario)
        ax.set_xlabel(f"{metric} (mean, 95% CI over folds)")
    fig.savefig(path, dpi=100)


def shots_figure(shots: dict[str, Any], path: Path) -> Figure:
    """Save the support-size curve to ``path``: one line per model with its 95% band over folds, x ticks
    at the support sizes, the legend beside the axes (never over the bands), ``meta`` drawn on top."""
    metric = shots["metric"]
    sizes = shots["support_sizes"]
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.subplots()
    for model, by_size in shots["models"].items():
        aggs = [by_size[f"support_{k}"].get(metric) for k in sizes]
        if any(a is None for a in aggs):
            continue
        top = model == META_MODEL
        (line,) = ax.plot(
            sizes,
            [a["mean"] for a in aggs],
            marker="o",
            label=model,
            lw=2.5 if top else 1.5,
            zorder=3 if top else 2,
        )
        lows, highs = [a["ci95"][0] for a in aggs], [a["ci95"][1] for a in aggs]
        ax.fill_between(sizes, lows, highs, color=line.get_color(), alpha=0.12, lw=0)
    ax.set_xticks(sizes, [str(k) for k in sizes])
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=11)
    better = "lower" if metric == "mae" else "higher"
    ax.set_title(f"new_user {metric.upper()} by support size ({better} is better)", fontsize=13)
    ax.set_xlabel("support ratings of the new user", fontsize=12)
    ax.set_ylabel(f"{metric.upper()}: mean over folds, band 95% CI", fontsize=12)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=11, title="model", frameon=False)
    fig.savefig(path, dpi=110)
    return fig


def _cell(agg: dict[str, Any] | None) -> str:
    if agg is None:
        return ""
    lo, hi = agg["ci95"]
    return f"{agg['mean']:.4f} [{lo:.4f}, {hi:.4f}]"


def _users_cell(agg: dict[str, Any] | None) -> str:
    if agg is None or "mean_users" not in agg:
        return ""
    return f"{agg['mean_users']:.4f} {_interval(agg['ci95_users'], signed=False)}"


def render_markdown(cv: dict[str, Any], shots: dict[str, Any]) -> str:
    """The report: setup, one table per scenario (mean and 95% t-interval over folds, and the primary
    metric's mean over users with its bootstrap interval), meta against every baseline, the text ablation,
    the support-size curve, the figures."""
    metric = _metric_of(cv)
    seeded = cv.get("seeded_models", [])
    seeds = (
        f"The models whose fit is random ({', '.join(seeded)}) are fitted with {cv.get('seeds', 1)} "
        "seeds per fold and averaged per fold. "
        if seeded
        else ""
    )
    lines = [
        "# Evaluation report",
        "",
        f"Protocol `{cv['protocol']}`, {cv['folds']} folds, task `{cv['task']}`, support size "
        f"{cv['support_size']}, seed {cv['seed']}. {seeds}Weighting `{cv.get('weighting', 'rows')}`: "
        "every user weighs the same, whatever its number of query rows (MAE and RMSE are the mean over "
        "users of each user's MAE and RMSE, like nDCG, AUC and the top-k metrics). Each cell: mean over "
        f"folds [95% t-interval]; `{metric} (users)`: mean over users of each user's value (averaged over "
        "the seeds and the folds it is scored in) [95% bootstrap interval over users].",
    ]
    for scenario in SCENARIO_NAMES:
        models = cv["scenarios"].get(scenario, {})
        if not models:
            continue
        names = list(dict.fromkeys(m for metrics in models.values() for m in metrics))
        over_users = any("mean_users" in m.get(metric, {}) for m in models.values())
        columns = [*names, f"{metric} (users)"] if over_users else names
        sizes = cv["sizes"][scenario]
        lines += [
            "",
            f"## {scenario}",
            "",
            f"{sum(sizes['query_rows'])} query rows of {sum(sizes['query_users'])} user-folds.",
            "",
            "| model | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for model, metrics in models.items():
            row = [_cell(metrics.get(n)) for n in names]
            row += [_users_cell(metrics.get(metric))] if over_users else []
            lines.append(f"| {model} | " + " | ".join(row) + " |")
    tests = _tests(cv)
    if tests:
        boot = cv.get("bootstrap", {})
        lines += [
            "",
            "## Paired tests: meta against every baseline",
            "",
            f"Per user: its {metric} averaged over the seeds and the folds it is scored in. Difference: mean "
            f"over the users both models were scored on of meta's {metric} minus the baseline's [95% "
            f"percentile bootstrap interval, {boot.get('resamples', 'n/a')} resamples of the users]. p: "
            f"Wilcoxon signed-rank over those users, one-sided (meta's {metric} is "
            f"{'lower' if metric == 'mae' else 'higher'}); Holm p: Holm's correction over the "
            f"{_family(tests)} (scenario, baseline) tests with a p-value.",
            "",
            "| scenario | baseline | meta - baseline [95% CI] | users | p | Holm p |",
            "|---|---|---|---|---|---|",
        ]
        for scenario, baseline, t in tests:
            row = [scenario, baseline, _difference(t), str(t["n_users"]), _p(t["p_value"]), _p(t["p_holm"])]
            lines.append("| " + " | ".join(row) + " |")
    ablation = cv.get("ablations", {}).get("use_text", {})
    if ablation:
        lines += [
            "",
            "## Text ablation: meta against meta_no_text",
            "",
            f"Relative {metric} improvement of meta over meta_no_text, per fold, then mean [95% t-interval].",
            "",
            "| scenario | improvement | per fold |",
            "|---|---|---|",
        ]
        for scenario, a in ablation.items():
            per_fold = ", ".join(f"{v:+.1%}" for v in a["per_fold"])
            lo, hi = a["ci95"]
            lines.append(f"| {scenario} | {a['mean']:+.1%} [{lo:+.1%}, {hi:+.1%}] | {per_fold} |")
    sizes = shots["support_sizes"]
    lines += [
        "",
        f"## Support-size curve (new_user {shots['metric']})",
        "",
        "| model | " + " | ".join(str(k) for k in sizes) + " |",
        "|---|" + "---|" * len(sizes),
    ]
    for model, by_size in shots["models"].items():
        cells = [by_size[f"support_{k}"].get(shots["metric"]) for k in sizes]
        lines.append(
            f"| {model} | " + " | ".join("" if c is None else f"{c['mean']:.4f}" for c in cells) + " |"
        )
    lines += [
        "",
        "## Figures",
        "",
        f"![scenarios]({SCENARIOS_PNG})",
        "",
        f"![support-size curve]({SHOTS_PNG})",
        "",
    ]
    return "\n".join(lines)


def write_report(cv: dict[str, Any], shots: dict[str, Any], folder: Path) -> Path:
    """Replace ``folder`` atomically with ``report.md``, ``scenarios.png`` and ``shots.png``."""
    with atomic_dir(folder) as tmp:
        _scenarios_figure(cv, tmp / SCENARIOS_PNG)
        shots_figure(shots, tmp / SHOTS_PNG)
        (tmp / "report.md").write_text(render_markdown(cv, shots))
    return folder / "report.md"
