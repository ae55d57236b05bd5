"""Wall time of the evaluate stage's cross-validation: every model of ``eval.models``, every fold.

    python benchmarks/eval_runtime.py --features data/features --json benchmarks/results/eval_runtime_cpu.json

Reads the feature set the ``features`` stage wrote (MovieLens-100k in the default project) and the params
file (default ``params.yaml``: kfold, 5 folds, the 8 default models), runs ``cross_validate`` once, and
reports the total wall time, the fit and scoring seconds of each model summed over folds, the headline
new_user numbers, and the load average before and after (the machine may be shared: a loaded machine
makes every number larger). ``--set`` overrides params as the CLI does.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from pipeline.evaluation.cv import cross_validate  # noqa: E402
from pipeline.evaluation.report import format_table  # noqa: E402
from pipeline.features.store import load_feature_set  # noqa: E402
from pipeline.io import write_json  # noqa: E402
from pipeline.params import load_params  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--features", type=Path, default=Path("data/features"), help="feature set folder")
    parser.add_argument("--params", type=Path, default=REPO / "params.yaml", help="params file")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="section.key=value")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--metrics", type=Path, default=None, help="write cv.json, shots.json, per_user.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    params = load_params(args.params, args.overrides)
    fs = load_feature_set(args.features)
    load_before = os.getloadavg()
    start = time.perf_counter()
    result = cross_validate(params, fs)
    total = time.perf_counter() - start
    load_after = os.getloadavg()

    per_model = {
        name: {"fit_s": round(sum(t["fit"]), 1), "score_s": round(sum(t["score"]), 1)}
        for name, t in result.timings.items()
    }
    new_user = result.cv["scenarios"]["new_user"]
    out = {
        "command": " ".join(["python benchmarks/eval_runtime.py", *(sys.argv[1:] if argv is None else argv)]),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "workers": params.eval.workers,
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "protocol": params.eval.protocol,
        "folds": params.eval.folds,
        "models": list(params.eval.models),
        "dataset": f"{fs.n_users} users, {fs.n_items} items, {fs.ratings['rating'].size} ratings",
        "total_s": round(total, 1),
        "per_model": per_model,
        "new_user_mae": {m: round(v["mae"]["mean"], 4) for m, v in new_user.items() if "mae" in v},
        "tests": result.cv["tests"],
    }
    print(format_table(result.cv))
    shown = ("total_s", "per_model", "load_average_before", "load_average_after")
    print(json.dumps({k: out[k] for k in shown}))
    if args.json is not None:
        write_json(out, args.json)
    if args.metrics is not None:
        write_json(result.cv, args.metrics / "cv.json")
        write_json(result.shots, args.metrics / "shots.json")
        write_json(result.per_user, args.metrics / "per_user.json")
    return out


if __name__ == "__main__":
    main()
