"""The evaluation's human-readable outputs: ``report.md`` with PNG figures, and the DVC plot data."""

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


def _metric_of(cv: dict[str, Any]) -> str:
    return "auc" if cv["task"] == "implicit" else "mae"


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


def _p(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3g}"


def render_markdown(cv: dict[str, Any], shots: dict[str, Any]) -> str:
    """The report: setup, one table per scenario (mean and 95% t-interval over folds), the paired tests,
    the text ablation, the support-size curve, the figures."""
    metric = _metric_of(cv)
    lines = [
        "# Evaluation report",
        "",
        f"Protocol `{cv['protocol']}`, {cv['folds']} folds, task `{cv['task']}`, support size "
        f"{cv['support_size']}, seed {cv['seed']}. Each cell: mean over folds [95% t-interval].",
    ]
    for scenario in SCENARIO_NAMES:
        models = cv["scenarios"].get(scenario, {})
        if not models:
            continue
        names = list(dict.fromkeys(m for metrics in models.values() for m in metrics))
        sizes = cv["sizes"][scenario]
        lines += [
            "",
            f"## {scenario}",
            "",
            f"{sum(sizes['query_rows'])} query rows of {sum(sizes['query_users'])} user-folds.",
            "",
            "| model | " + " | ".join(names) + " |",
            "|---|" + "---|" * len(names),
        ]
        for model, metrics in models.items():
            lines.append(f"| {model} | " + " | ".join(_cell(metrics.get(n)) for n in names) + " |")
    if cv["tests"]:
        lines += [
            "",
            "## Paired tests: meta against the best baseline",
            "",
            "Wilcoxon signed-rank over users (per-user value: mean over the folds the user is scored in), "
            f"one-sided: meta's {metric} is {'lower' if metric == 'mae' else 'higher'}.",
            "",
            "| scenario | metric | best baseline | mean difference (meta - baseline) | users | p |",
            "|---|---|---|---|---|---|",
        ]
        for scenario, t in cv["tests"].items():
            diff = "n/a" if t["mean_difference"] is None else f"{t['mean_difference']:+.4f}"
            cells = [scenario, t["metric"], t["against"], diff, str(t["n_users"]), _p(t["p_value"])]
            lines.append("| " + " | ".join(cells) + " |")
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
