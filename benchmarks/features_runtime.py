"""Wall time of the whole ``features`` stage on a dataset, as a user runs it (``metarec features``).

    python benchmarks/features_runtime.py --json benchmarks/results/features_runtime_cpu.json

In a scratch project (params.yaml of this repo plus ``--set`` overrides), runs ``metarec ingest`` and
``metarec validate`` (not timed), then ``metarec features`` twice: with an empty embedding cache (every
item text is encoded) and again with the cache filled (no text is encoded). Times the command from
process start to exit, imports and model loading included, and reports the children's peak RSS. The
data comes from ``$METAREC_DATA_MIRROR`` like the tests (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.io import write_json  # noqa: E402

ENCODED = re.compile(r"\((\d+) encoded\)")


def metarec(project: Path, command: str, overrides: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run ``metarec <command>`` in ``project``; (wall seconds, combined output); raise on failure."""
    cmd = [str(Path(sys.executable).with_name("metarec")), command]
    for item in overrides:
        cmd += ["--set", item]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"metarec {command} failed:\n{done.stdout}\n{done.stderr}")
    return seconds, done.stdout + done.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, help="write the result here")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="params override")
    args = ap.parse_args()

    env = dict(os.environ)
    env.setdefault("METAREC_DATA_MIRROR", str((REPO.parent / "shared" / "data").resolve()))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="metarec-bench-features-") as tmp:
        project = Path(tmp)
        for name in ("params.yaml", "dvc.yaml"):
            shutil.copy(REPO / name, project / name)
        shutil.copytree(REPO / "feedback", project / "feedback")
        for stage in ("ingest", "validate"):
            metarec(project, stage, args.overrides, env)
        runs = []
        for cache in ("empty", "filled"):
            seconds, out = metarec(project, "features", args.overrides, env)
            found = ENCODED.search(out)
            runs.append(
                {
                    "embedding_cache": cache,
                    "seconds": round(seconds, 2),
                    "texts_encoded": int(found.group(1)) if found else None,
                }
            )
            print(f"features, {cache} cache: {seconds:.1f} s, {runs[-1]['texts_encoded']} texts encoded")
    result: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/features_runtime.py", *sys.argv[1:]]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "overrides": args.overrides,
        "runs": runs,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }
    if args.json:
        write_json(result, args.json)
    print(f"peak RSS of the stage processes: {result['peak_rss_mb']} MB")


if __name__ == "__main__":
    main()
