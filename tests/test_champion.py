"""airflow_mlops.core.champion: what monitoring reads about ``<model>@champion``.

``read_champion`` against a real MLflow server is covered by tests/test_drift_operator.py
and tests/test_performance.py (the ``champion`` fixtures); these check the tag parsing.
"""

from __future__ import annotations

import pandas as pd
import pytest

from airflow_mlops.core.champion import ChampionFacts
from airflow_mlops.core.errors import MlopsError
from airflow_mlops.core.lineage import TAG_FEATURES, TAG_FEATURES_URI, TAG_REFERENCE_URI, TAG_TARGET
from airflow_mlops.core.storage import Storage


def facts(tags: dict[str, str]) -> ChampionFacts:
    return ChampionFacts(
        model_name="m",
        version="1",
        run_id="r1",
        experiment_id="0",
        model_uri="models:/m/1",
        tags=tags,
        metrics={},
    )


def test_features_and_reference_from_the_run_tags():
    champion = facts({TAG_FEATURES: '["a", "b"]', TAG_REFERENCE_URI: "/data/ref.parquet"})
    assert champion.features() == ["a", "b"]
    assert champion.reference_uri == "/data/ref.parquet"
    assert facts({}).features() is None and facts({}).reference_uri is None


@pytest.mark.parametrize("raw", ["not json", '{"a": 1}', "[1, 2]"])
def test_a_bad_feature_tag_names_the_tag_and_the_run(raw):
    with pytest.raises(MlopsError, match=f"Tag {TAG_FEATURES} of run r1"):
        facts({TAG_FEATURES: raw}).features()


def test_features_from_the_table_when_the_list_was_too_long_for_a_tag(tmp_path):
    uri = str(tmp_path / "holdout.parquet")
    pd.DataFrame({"x1": [1.0], "x2": [2.0], "label": [0]}).to_parquet(uri)
    champion = facts({TAG_FEATURES_URI: uri, TAG_TARGET: "label"})
    assert champion.features(Storage()) == ["x1", "x2"]
    assert champion.features() is None  # no storage: the caller falls back to all columns
