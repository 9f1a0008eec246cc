"""Evaluation with exclusion: scoring a challenger and a champion, today vs with the stable split.

1,000,000 evaluation rows x 20 numeric features (parquet, 30 daily partitions in a ``dt``
column, an ``id`` key). The rows are the challenger's hash holdout of a larger window. The
champion was trained on the first 20 days with another split seed, so part of these rows
were its training rows. Timed in one process (imports excluded), medians of ``--repeats``,
the modes interleaved so that machine noise falls on all of them:

* ``today``: read features + target, predict with both models, ``compute_metrics`` twice
  (what ``core.evaluation`` does on a recorded holdout);
* exclusion work: hash the ``id`` key (or, without ``data.key``, the 20 features and the
  target), work out the challenger's holdout and the champion's training rows
  (``core.stable_split``) and the rows neither trained on. The judged ratio is
  (today + this work) / today: nothing saved by scoring fewer rows is counted;
* the whole evaluation with exclusion: read features + target + ``id`` + ``dt``, the
  exclusion, predict every row with both models, ``compute_metrics`` on the compared rows
  (for information: its metrics run on fewer rows, so it can beat today);
* bootstrap CIs: ``core.confidence.compare_intervals`` for f1 and roc_auc (each model and
  the paired difference, 1,000 resamples) on the compared rows, reported on its own.

Two models: the default estimator (``RandomForestClassifier``, 100 trees) and a logistic
regression, whose prediction is so cheap that it shows the exclusion's cost at its largest.
Goal: (today + exclusion work) / today <= 1.1 for the default estimator.

    .venv/bin/python bench/bench_evaluation.py [--rows 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from _common import median, peak_rss_mb, report

N_FEATURES = 20
DAYS = 30
FRACTION = 0.2
CHALLENGER_SEED = 7
CHAMPION_SEED = 1  # the champion's split used another seed: its training rows overlap
GOAL = 1.1


def make_data(path: Path, rows: int) -> list[str]:
    """Rows that the challenger's split holds out, with their day and id; returns the days."""
    import numpy as np
    import pandas as pd

    from airflow_mlops.core.stable_split import holdout_mask

    rng = np.random.default_rng(42)
    candidates = pd.DataFrame({"id": np.arange(int(rows / FRACTION * 1.1))})
    held = candidates["id"].to_numpy()[holdout_mask(candidates, FRACTION, CHALLENGER_SEED, ["id"])]
    ids = held[:rows]
    features = rng.normal(size=(rows, N_FEATURES))
    weights = rng.normal(size=N_FEATURES)
    logit = features @ weights / 3 + rng.normal(scale=0.8, size=rows)
    frame = pd.DataFrame(features, columns=[f"f{i}" for i in range(N_FEATURES)])
    frame["label"] = (logit > 0).astype("int64")
    frame["id"] = ids
    days = [f"2026-11-{d + 1:02d}" for d in range(DAYS)]
    frame["dt"] = pd.Categorical(np.array(days)[np.arange(rows) * DAYS // rows])
    frame.to_parquet(path, index=False)
    return days


def fit_models(path: Path, kind: str):
    import pandas as pd
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    sample = pd.read_parquet(path).sample(20_000, random_state=0)
    X, y = sample[[f"f{i}" for i in range(N_FEATURES)]], sample["label"]
    models = []
    for seed, n in ((0, 20_000), (1, 10_000)):
        model = (
            RandomForestClassifier(random_state=seed, n_jobs=1)
            if kind == "forest"
            else LogisticRegression(max_iter=500)
        )
        models.append(model.fit(X.iloc[:n], y.iloc[:n]))
    return models  # challenger, champion


def today(path: Path, challenger, champion) -> dict:
    import pandas as pd

    from airflow_mlops.core.metrics import compute_metrics, predict_for_metrics

    features = [f"f{i}" for i in range(N_FEATURES)]
    frame = pd.read_parquet(path, columns=[*features, "label"])
    X, y = frame[features], frame["label"].to_numpy()
    scores = {}
    for name, model in (("challenger", challenger), ("champion", champion)):
        pred, score = predict_for_metrics(model, X, "classification")
        scores[name] = compute_metrics("classification", y, pred, score)
    return {"rows": len(frame), "metrics": scores}


def with_exclusion(
    path: Path, challenger, champion, days: list[str], by_content: bool, predict: bool = True
) -> dict:
    import pandas as pd

    from airflow_mlops.core.metrics import compute_metrics, predict_for_metrics
    from airflow_mlops.core.stable_split import (
        holdout_mask_for_keys,
        row_keys,
        rows_from_files,
        trained_on,
    )

    features = [f"f{i}" for i in range(N_FEATURES)]
    frame = pd.read_parquet(path, columns=[*features, "label", "id", "dt"])
    started = time.perf_counter()
    keys = row_keys(frame, [*features, "label"] if by_content else ["id"])
    held_out = holdout_mask_for_keys(keys, FRACTION, CHALLENGER_SEED)
    in_champion_days = rows_from_files(frame, "dt", days[:20])
    champion_rows = trained_on(
        frame, None, CHAMPION_SEED, FRACTION, in_training_data=in_champion_days, keys=keys
    )
    comparable = held_out & ~champion_rows
    exclusion_s = time.perf_counter() - started
    if not predict:
        return {"exclusion_s": exclusion_s, "compared": int(comparable.sum())}
    X, y = frame[features], frame["label"].to_numpy()
    scores, outputs = {}, {}
    for name, model in (("challenger", challenger), ("champion", champion)):
        pred, score = predict_for_metrics(model, X, "classification")
        outputs[name] = (pred[comparable], score[comparable])
        scores[name] = compute_metrics("classification", y[comparable], *outputs[name])
    return {
        "rows": len(frame),
        "exclusion_s": exclusion_s,
        "compared": int(comparable.sum()),
        "excluded": int((~comparable).sum()),
        "metrics": scores,
        "outputs": outputs,
        "y": y[comparable],
    }


def intervals(result: dict) -> dict:
    from airflow_mlops.core.confidence import compare_intervals

    (pred_a, score_a), (pred_b, score_b) = (
        result["outputs"][m] for m in ("challenger", "champion")
    )
    found = compare_intervals(
        ["f1", "roc_auc"], result["y"], pred_a, pred_b, score_a=score_a, score_b=score_b
    )
    return {name: {k: v.to_dict() for k, v in per.items()} for name, per in found.items()}


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return time.perf_counter() - start, value


def run(kind: str, path: Path, warm: Path, days: list[str], repeats: int) -> dict:
    challenger, champion = fit_models(path, kind)
    # Untimed warm-up on a small file: first calls pay lazy imports and allocations.
    today(warm, challenger, champion)
    intervals(with_exclusion(warm, challenger, champion, days, False))
    times: dict[str, list[float]] = {m: [] for m in ("today", "new", "key", "content", "ci")}
    last = {}
    for _ in range(repeats):
        t, last["today"] = timed(today, path, challenger, champion)
        times["today"].append(t)
        t, last["new"] = timed(with_exclusion, path, challenger, champion, days, False)
        times["new"].append(t)
        times["key"].append(last["new"]["exclusion_s"])
        content = with_exclusion(path, challenger, champion, days, True, predict=False)
        times["content"].append(content["exclusion_s"])
        t, last["ci"] = timed(intervals, last["new"])
        times["ci"].append(t)
    med = {mode: median(values) for mode, values in times.items()}
    f1 = last["ci"]["f1"]["difference"]
    base = med["today"]
    return {
        "model": kind,
        "rows": last["today"]["rows"],
        "compared": last["new"]["compared"],
        "excluded": last["new"]["excluded"],
        "today_s": round(base, 3),
        "new_s": round(med["new"], 3),
        "exclusion_key_s": round(med["key"], 3),
        "exclusion_content_s": round(med["content"], 3),
        "intervals_s": round(med["ci"], 3),
        "ratio_new": round(med["new"] / base, 3),
        "ratio_key": round((base + med["key"]) / base, 3),
        "ratio_content": round((base + med["content"]) / base, 3),
        "ratio_key_with_intervals": round((base + med["key"] + med["ci"]) / base, 3),
        "f1_today": {m: round(v["f1"], 4) for m, v in last["today"]["metrics"].items()},
        "f1_compared": {m: round(v["f1"], 4) for m, v in last["new"]["metrics"].items()},
        "f1_difference_ci": [round(f1["low"], 4), round(f1["estimate"], 4), round(f1["high"], 4)],
        "runs": {mode: [round(t, 3) for t in values] for mode, values in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="forest,logistic")
    args = parser.parse_args()
    figures = []
    with tempfile.TemporaryDirectory() as tmp:
        path, warm = Path(tmp) / "evaluation.parquet", Path(tmp) / "warm.parquet"
        days = make_data(path, args.rows)
        make_data(warm, 20_000)
        for kind in args.models.split(","):
            result = run(kind, path, warm, days, args.repeats)
            figures.append(result)
            report(
                f"evaluation at {result['rows']:,} rows, {kind} models",
                [
                    (
                        "rows compared / excluded",
                        f"{result['compared']:,} / {result['excluded']:,}",
                    ),
                    ("today (median s)", f"{result['today_s']:.3f}"),
                    (
                        "exclusion work, id key",
                        f"{result['exclusion_key_s']:.3f} s  (today + it: ratio "
                        f"{result['ratio_key']:.3f}, goal <= {GOAL})",
                    ),
                    (
                        "exclusion work, content hash",
                        f"{result['exclusion_content_s']:.3f} s  (ratio {result['ratio_content']:.3f})",
                    ),
                    (
                        "whole evaluation with exclusion",
                        f"{result['new_s']:.3f} s  (ratio {result['ratio_new']:.3f}; metrics on "
                        "the compared rows only)",
                    ),
                    (
                        "bootstrap CIs f1+roc_auc",
                        f"{result['intervals_s']:.3f} s  (today + exclusion + CIs: ratio "
                        f"{result['ratio_key_with_intervals']:.3f})",
                    ),
                    ("f1 challenger/champion today", json.dumps(result["f1_today"])),
                    ("f1 on comparable rows", json.dumps(result["f1_compared"])),
                    ("f1 difference [low, est, high]", json.dumps(result["f1_difference_ci"])),
                ],
            )
    print(f"  peak RSS {peak_rss_mb():.0f} MB")
    print(json.dumps({"bench": "evaluation", "goal_ratio": GOAL, "results": figures}))


if __name__ == "__main__":
    main()
