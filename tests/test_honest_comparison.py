"""An honest champion/challenger comparison: no row either model trained on decides.

The planted-memorisation test recreates issue #16's measurement on scikit-learn's
breast-cancer data. Champion v1 is a 1-nearest-neighbour pipeline (it memorises its training
rows) trained on half of the small-radius tumours; challenger v2 is trained on v1's data plus
the other half plus the large-radius tumours, under another split seed, so part of v2's
holdout is rows v1 trained on. The training runs are built by hand with the contract's
records (model, ``mlops/manifest.json``, ``mlops.split.*`` tags, a holdout carrying
``__mlops_file``) on the real MLflow server, so the test pins exactly what evaluation reads.

The rule tests below it drive :func:`airflow_mlops.core.comparison.comparison_set` directly.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from airflow_mlops.core.comparison import ChampionFacts, comparison_set
from airflow_mlops.core.datasets import SOURCE_FILE_COLUMN
from airflow_mlops.core.manifest import Manifest, ManifestEntry
from airflow_mlops.core.stable_split import StableSplit

TARGET = "target"
# The challenger must beat the champion by 0.07 F1. On the rows neither model trained on it
# does; on its whole holdout the champion's memorised rows shrink the margin below that.
POLICY = {"change_thresholds": {"f1": {"min_delta": 0.07}}}
CHAMPION_SEED, CHALLENGER_SEED, HOLDOUT_FRACTION = 1, 2, 0.3


# -- the planted-memorisation scenario ------------------------------------------------------


def _partitions(root: Path) -> list[str]:
    """Breast-cancer rows as three daily partitions: small radius A, small radius B, large."""
    from sklearn.datasets import load_breast_cancer

    frame = load_breast_cancer(as_frame=True).frame
    frame.columns = [str(c).replace(" ", "_") for c in frame.columns]
    small = frame[frame["mean_radius"] < frame["mean_radius"].median()]
    large = frame[frame["mean_radius"] >= frame["mean_radius"].median()]
    order = np.random.default_rng(0).permutation(len(small))
    half = len(small) // 2
    parts = {
        "2026-11-01": small.iloc[order[:half]],
        "2026-11-02": small.iloc[order[half:]],
        "2026-11-03": large,
    }
    for day, part in parts.items():
        folder = root / f"dt={day}"
        folder.mkdir(parents=True)
        part.to_parquet(folder / "part-0.parquet", index=False)
    return [c for c in frame.columns if c != TARGET]


def _train_by_hand(
    client: Any,
    experiment_id: str,
    files: list[Any],
    features: list[str],
    seed: int,
    model_name: str,
    root: Path,
) -> tuple[str, StableSplit, pd.DataFrame]:
    """A training run as the contract records it; returns (run id, split, holdout)."""
    import fsspec
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from airflow_mlops.core import lineage
    from airflow_mlops.core.datasets import read_files
    from airflow_mlops.core.manifest import build_manifest
    from airflow_mlops.core.storage import Storage

    fs = fsspec.filesystem("file")
    frame = read_files(fs, files, source_column=SOURCE_FILE_COLUMN)
    frame[SOURCE_FILE_COLUMN] = frame[SOURCE_FILE_COLUMN].astype(str)
    split = StableSplit.resolved(frame[[*features, TARGET]], HOLDOUT_FRACTION, seed)
    held_out = split.holdout(frame)
    train, holdout = frame[~held_out], frame[held_out][[*features, TARGET, SOURCE_FILE_COLUMN]]
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=1))
    model.fit(train[features], train[TARGET])

    run_id = client.create_run(experiment_id).info.run_id
    info = mlflow.sklearn.log_model(
        model,
        name="model",
        run_id=run_id,
        signature=infer_signature(train[features], model.predict(train[features])),
        pip_requirements=["scikit-learn", "mlflow"],
        serialization_format="cloudpickle",
    )
    holdout_uri = str(root / f"holdout-{run_id}.parquet")
    holdout_sha = Storage().write_table(holdout.reset_index(drop=True), holdout_uri)
    client.log_text(run_id, build_manifest(fs, files).to_json(), lineage.MANIFEST_ARTIFACT_PATH)
    tags = {
        lineage.TAG_MODEL_URI: info.model_uri,
        lineage.TAG_HOLDOUT_URI: holdout_uri,
        lineage.TAG_HOLDOUT_SHA256: holdout_sha,
        lineage.TAG_TARGET: TARGET,
        lineage.TAG_TASK: "classification",
        lineage.TAG_FEATURES: json.dumps(features),
        lineage.TAG_MODEL_NAME: model_name,
        lineage.TAG_DATA_URI: str(root / "data"),
        **split.to_tags(),
    }
    for key, value in tags.items():
        client.set_tag(run_id, key, value)
    client.set_terminated(run_id)
    return run_id, split, holdout.reset_index(drop=True)


@pytest.fixture(scope="module")
def planted(mlflow_server: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """v1 (champion, memorises half the small tumours) and v2 (challenger, all rows)."""
    import fsspec
    import mlflow
    from mlflow.tracking import MlflowClient

    from airflow_mlops.core.datasets import resolve_files
    from airflow_mlops.core.lineage import RunContext
    from airflow_mlops.core.registry import register_version

    mlflow.set_tracking_uri(mlflow_server)
    client = MlflowClient(mlflow_server)
    root = tmp_path_factory.mktemp("planted")
    features = _partitions(root / "data")
    files = resolve_files(fsspec.filesystem("file"), str(root / "data"))
    first_day = [f for f in files if f.partition["dt"] == "2026-11-01"]
    name = f"planted-{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(name)
    v1_run, v1_split, _ = _train_by_hand(
        client, experiment, first_day, features, CHAMPION_SEED, name, root
    )
    v2_run, _, v2_holdout = _train_by_hand(
        client, experiment, files, features, CHALLENGER_SEED, name, root
    )
    v1_model_uri = client.get_run(v1_run).data.tags["mlops.model_uri"]
    v1 = register_version(
        client, name, v1_model_uri, context=RunContext(task_id="register"), run_id=v1_run
    )
    client.set_registered_model_alias(name, "champion", v1.version)
    # The rows of v2's holdout that v1 trained on, worked out independently of evaluation.
    from_v1_files = (v2_holdout[SOURCE_FILE_COLUMN] == first_day[0].path).to_numpy()
    leaked = v1_split.trained_on(v2_holdout, in_training_data=from_v1_files)
    return {
        "name": name,
        "v2_run": v2_run,
        "v2_holdout": v2_holdout,
        "features": features,
        "leaked": leaked,
        "v1_files": {f.path for f in first_day},
    }


def _evaluate(client: Any, planted: dict[str, Any], **options: Any) -> dict[str, Any]:
    from airflow_mlops.core.evaluation import challenger_from_training, evaluate_challenger
    from airflow_mlops.core.provenance import ModelTrust
    from airflow_mlops.core.storage import Storage

    challenger = challenger_from_training(client, {"run_id": planted["v2_run"]})
    return evaluate_challenger(
        client,
        Storage(),
        challenger,
        model_name=planted["name"],
        policy=POLICY,
        # Hand-built runs are not signed by the training operator: trust them explicitly.
        trust=ModelTrust(trust_unsigned=True),
        **options,
    ).record


def _old_style_verdict(client: Any, planted: dict[str, Any]) -> tuple[Any, dict, dict]:
    """What evaluation did before: both models scored on v2's whole holdout."""
    from airflow_mlops.core.evaluation import load_model_for_scoring, score_model
    from airflow_mlops.core.policy import decide
    from airflow_mlops.core.provenance import ModelTrust

    holdout, features = planted["v2_holdout"], planted["features"]
    trust = ModelTrust(trust_unsigned=True)
    scores = {}
    for who, uri in (
        ("challenger", client.get_run(planted["v2_run"]).data.tags["mlops.model_uri"]),
        ("champion", f"models:/{planted['name']}@champion"),
    ):
        model, _ = load_model_for_scoring(uri, client=client, trust=trust)
        scores[who] = score_model(
            model,
            holdout[features],
            holdout[TARGET],
            "classification",
            {"leaked": planted["leaked"]},
        )
    decision = decide(scores["challenger"].metrics, scores["champion"].metrics, POLICY)
    return decision, scores["challenger"], scores["champion"]


def test_planted_memorisation_decides_the_old_comparison_but_not_the_new_one(client, planted):
    leaked = planted["leaked"]
    old, old_challenger, old_champion = _old_style_verdict(client, planted)
    new = _evaluate(client, planted)
    print(
        f"\nv2 holdout {len(leaked)} rows, {int(leaked.sum())} of them in v1's training data"
        f"\nOLD (whole holdout): champion f1 {old_champion.metrics['f1']:.3f} "
        f"(on its training rows {old_champion.slices['leaked']['f1']:.3f}), challenger f1 "
        f"{old_challenger.metrics['f1']:.3f} -> {old.reason}"
        f"\nNEW: rows compared {new['rows_compared']}, excluded {new['rows_excluded']} "
        f"{new['comparison']['excluded_because']}: champion f1 "
        f"{new['champion_metrics']['f1']:.3f}, challenger f1 "
        f"{new['challenger_metrics']['f1']:.3f} -> {new['reason']}"
    )
    # The measurement of the issue: the memorising champion is perfect on its training rows,
    # which inflates its whole-holdout score, and that inflation decides the old verdict.
    assert 20 <= leaked.sum() <= 45
    assert old_champion.slices["leaked"]["f1"] == 1.0
    assert old_champion.metrics["f1"] > new["champion_metrics"]["f1"] + 0.02
    assert old.promote is False

    # The new evaluator excludes exactly those rows and decides on the others.
    assert new["comparison"]["basis"] == "membership"
    assert new["comparison"]["excluded_because"]["champion_trained_on"] == int(leaked.sum())
    assert new["rows_excluded"] == int(leaked.sum())
    assert new["rows_compared"] == len(leaked) - int(leaked.sum())
    held = planted["v2_holdout"][~leaked]
    assert new["champion_metrics"]["f1"] == pytest.approx(_f1_of_champion_on(client, planted, held))
    assert new["promote"] is True, new["reason"]
    assert (
        f"rows compared {new['rows_compared']}, excluded {new['rows_excluded']}" in (new["reason"])
    )
    difference = new["intervals"]["f1"]["difference"]
    assert difference["estimate"] == pytest.approx(
        new["challenger_metrics"]["f1"] - new["champion_metrics"]["f1"]
    )
    assert difference["low"] < difference["estimate"] < difference["high"]
    assert difference["seed"] == CHALLENGER_SEED and difference["n_rows"] == new["rows_compared"]


def _f1_of_champion_on(client: Any, planted: dict[str, Any], rows: pd.DataFrame) -> float:
    from sklearn.metrics import f1_score

    from airflow_mlops.core.evaluation import load_model_for_scoring
    from airflow_mlops.core.provenance import ModelTrust

    model, _ = load_model_for_scoring(
        f"models:/{planted['name']}@champion",
        client=client,
        trust=ModelTrust(trust_unsigned=True),
    )
    return float(f1_score(rows[TARGET], model.predict(rows[planted["features"]])))


def test_too_few_comparable_rows_is_insufficient_evidence_never_a_pass(client, planted):
    record = _evaluate(client, planted, min_rows=1000)
    rows = record["rows_compared"]
    assert record["promote"] is False
    assert record["reason"].startswith(f"not promoted: insufficient evidence ({rows} rows)")
    evidence = [r for r in record["rules"] if r["rule"] == "evidence"]
    assert evidence and evidence[0]["verdict"] == "fail"
    assert record["champion_metrics"] is None and record["first_model"] is False


def test_forward_evaluation_compares_only_partitions_after_the_champions_window(client, planted):
    record = _evaluate(client, planted, on="newest")
    newer = ~planted["v2_holdout"][SOURCE_FILE_COLUMN].isin(planted["v1_files"])
    assert record["comparison"]["on"] == "newest"
    assert record["comparison"]["basis"] == "partitions_after_champion_window"
    assert record["rows_compared"] == int(newer.sum())
    assert record["comparison"]["excluded_because"] == {
        "not_after_champion_window": int((~newer).sum())
    }


# -- the rules, without a server ------------------------------------------------------------


def _entry(path: str, sha: str = "s1", day: str | None = None) -> ManifestEntry:
    return ManifestEntry(path, 10, "etag:x", sha, {"dt": day} if day else {})


def _frame(files: list[str]) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    return pd.DataFrame(
        {
            "x": rng.normal(size=len(files)),
            TARGET: rng.integers(0, 2, len(files)),
            SOURCE_FILE_COLUMN: files,
        }
    )


def test_a_file_changed_since_the_champion_read_it_is_excluded():
    frame = _frame(["/d/a.parquet"] * 40 + ["/d/b.parquet"] * 40 + ["/d/c.parquet"] * 20)
    split = StableSplit.resolved(frame[["x", TARGET]], 0.3, 5)
    champion = ChampionFacts(
        "run",
        manifest=Manifest((_entry("/d/a.parquet"), _entry("/d/b.parquet", "old"))),
        split=split,
    )
    ours = Manifest((_entry("/d/a.parquet"), _entry("/d/b.parquet", "new"), _entry("/d/c.parquet")))
    result = comparison_set(frame, champion, challenger_manifest=ours)
    trained = split.trained_on(
        frame, in_training_data=(frame[SOURCE_FILE_COLUMN] == "/d/a.parquet")
    )
    assert result.basis == "membership"
    assert result.excluded == {
        "champion_trained_on": int(trained.sum()),
        "file_changed_since_champion": 40,
    }
    assert result.rows_compared == 100 - 40 - int(trained.sum())

    # A column the champion hashed is gone: none of its files' rows can be vouched for.
    renamed = frame.rename(columns={"x": "x2"})
    unknown = comparison_set(renamed, champion, challenger_manifest=ours)
    assert unknown.excluded["champion_membership_unknown"] == 40
    assert unknown.rows_compared == 20


def test_without_split_or_manifest_only_files_the_champion_cannot_have_read_count():
    frame = _frame(["/d/dt=1/a.parquet"] * 30 + ["/d/dt=2/b.parquet"] * 30)
    no_split = ChampionFacts("run", manifest=Manifest((_entry("/d/dt=1/a.parquet"),)))
    result = comparison_set(frame, no_split, challenger_manifest=None)
    assert result.basis == "files_not_in_champion_manifest"
    assert result.rows_compared == 30
    assert result.excluded == {"champion_membership_unknown": 30}

    ours = Manifest(
        (
            _entry("/d/dt=1/a.parquet", day="2026-11-01"),
            _entry("/d/dt=2/b.parquet", day="2026-11-03"),
        )
    )
    no_manifest = ChampionFacts("run", started_at=datetime(2026, 11, 2, 9), data_uri="/old/x.csv")
    newer = comparison_set(frame, no_manifest, challenger_manifest=ours)
    assert newer.basis == "files_newer_than_champion" and newer.rows_compared == 30
    # A newer file under the champion's own data URI may hold rows it read: excluded.
    same_uri = ChampionFacts("run", started_at=datetime(2026, 11, 2, 9), data_uri="/d")
    assert comparison_set(frame, same_uri, challenger_manifest=ours).rows_compared == 0


def test_nothing_known_compares_nothing_except_rows_of_the_champions_own_holdout():
    frame = _frame(["/d/a.parquet"] * 30)
    unknown = comparison_set(frame, ChampionFacts(None), challenger_manifest=None)
    assert unknown.basis == "none" and unknown.rows_compared == 0
    assert "cannot be worked out" in unknown.explanation

    legacy = frame.drop(columns=[SOURCE_FILE_COLUMN])
    champion = ChampionFacts("run", holdout=legacy.iloc[:12].copy())
    result = comparison_set(legacy, champion, challenger_manifest=None)
    assert result.basis == "champion_holdout" and result.rows_compared == 12
    assert result.excluded == {"champion_membership_unknown": 18}


def test_evaluation_on_must_be_known():
    from airflow_mlops.core.errors import ConfigError

    with pytest.raises(ConfigError, match=r"evaluation\.on must be one of"):
        comparison_set(_frame(["/a"]), ChampionFacts(None), challenger_manifest=None, on="all")
