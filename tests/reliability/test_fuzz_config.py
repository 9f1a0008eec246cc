"""Bad pipeline YAML: every file either loads and builds its DAGs, or fails with a ConfigError.

A pipeline file is parsed by the DAG processor every 30 s; an unexpected exception there is
an import error that names a library frame instead of the bad field, and a slow parse is a
DAG that never loads. So for any input the promise is: :func:`load_config` returns a config
whose DAGs build, or raises an :class:`~airflow_mlops.core.errors.MlopsError` (normally
``ConfigError``, naming the file and the field) — quickly.

hypothesis mutates the shipped example (``include/pipelines/breast_cancer.yaml``): typed
values swapped into random fields, raw byte edits of the file (invalid UTF-8, NUL, deep
nesting included), and nested YAML aliases of random shape. The crash families found so
far (invalid UTF-8, deep nesting, NUL characters, non-mapping sections, alias bombs,
over-long tags, segments with batch prediction) are fixed; the fixed cases below are their
regression tests, and the fuzzers draw them again.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import pytest
import yaml
from _fuzz import examples
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_mlops.core.errors import ConfigError, MlopsError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "include" / "pipelines" / "breast_cancer.yaml"
BASE = yaml.safe_load(EXAMPLE.read_text())
# A parse slower than this would eat into the DAG processor's 30 s import timeout.
MAX_PARSE_S = 10.0
FUZZ = settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


def load_and_build(path: Path) -> str:
    """What the DAG processor does with a pipeline file; returns 'ok' or raises."""
    from airflow_mlops.factories.config import load_config
    from airflow_mlops.factories.continuous_training import continuous_training_dag
    from airflow_mlops.factories.monitoring import monitoring_dag

    config = load_config(path)
    continuous_training_dag(config)
    if config.monitoring.enabled and (config.monitoring.current_uri or config.data.inference_uri):
        monitoring_dag(config)
    return "ok"


def assert_clean_outcome(path: Path) -> str:
    started = time.monotonic()
    try:
        outcome = load_and_build(path)
    except MlopsError as err:
        assert str(err).strip(), "an error must say something"
        outcome = type(err).__name__
    elapsed = time.monotonic() - started
    assert elapsed < MAX_PARSE_S, f"parsing took {elapsed:.1f}s"
    return outcome


def _field_paths(obj, prefix=()):
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield (*prefix, key)
            yield from _field_paths(value, (*prefix, key))


FIELD_PATHS = [
    *_field_paths(BASE),
    ("model_name",), ("retries",), ("owner",), ("connections", "mlflow_conn_id"),
    ("training", "search"), ("training", "time_column"), ("monitoring", "decay"),
    ("monitoring", "columns"), ("evaluation", "slices"), ("promotion", "serving_check"),
    ("unknown_section",), ("data", "unknown_field"), ("segments",),
]  # fmt: skip

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.sampled_from(
        ["", "../../etc/passwd", "s3://", "s3://bucket", "{{ params.x }}", "* * * * *",
         "@daily", "sklearn.nope.Nope", "os.system", "é", "manual", "auto", "random",
         "classification", "models:/x@champion", "file:///etc/passwd", "a\x00b", "x" * 101,
         "{{ conn.x.password }}", "{% for x in y %}{{ x }}{% endfor %}", "/x/{{ ds }}.csv",
         "s3://other-bucket/x.csv", "xgboost.XGBClassifier",
         {"column": "benign", "values": ["a", "b"]}]
    ),
    st.lists(st.one_of(st.text(max_size=8), st.integers()), max_size=4),
    st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=5)), max_size=3),
)  # fmt: skip


def _set(raw: dict, path: tuple, value) -> None:
    node = raw
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[path[-1]] = value


def _write(tmp_path: Path, raw_or_text, name: str = "pipeline.yaml") -> Path:
    # Keep the example's relative data/suite paths meaningful: same folder depth.
    folder = tmp_path / "include" / "pipelines"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if isinstance(raw_or_text, bytes):
        path.write_bytes(raw_or_text)
    elif isinstance(raw_or_text, str):
        path.write_text(raw_or_text, encoding="utf-8")
    else:
        path.write_text(yaml.safe_dump(raw_or_text, allow_unicode=True), encoding="utf-8")
    return path


def test_the_unmodified_example_loads_and_builds(tmp_path):
    assert assert_clean_outcome(_write(tmp_path, copy.deepcopy(BASE))) == "ok"


@FUZZ
@given(mutations=st.lists(st.tuples(st.sampled_from(FIELD_PATHS), VALUES), min_size=1, max_size=3))
def test_random_values_in_random_fields_load_or_fail_with_a_config_error(mutations, tmp_path):
    raw = copy.deepcopy(BASE)
    for path, value in mutations:
        _set(raw, path, value)
    assert_clean_outcome(_write(tmp_path, raw))


_EDITS = st.sampled_from(
    [b"\n", b":", b": ", b"-", b"- ", b"  ", b"[", b"]", b"{", b"}", b",", b"'", b'"', b"#",
     b"&a ", b"*a", b"!!str ", b"!!python/object/apply:os.system ['true']", b"<<: ", b"? ", b"|",
     b">", b"%YAML 1.1\n", b"---\n", b"...\n", b"~", b"null", b"1e999", b"0x1F",
     "é".encode(), "\u202e".encode(), b"\t", b"\x00", b'"\\0"', b"\xff", b"\xe9", b"\xfe\xff",
     b"[" * 3000, b"[" * 3000 + b"]" * 3000, b"{a: " * 1500, b"2024-02-30", b"!!float ",
     b"!!timestamp ", b"!!int ", b"!!bool "]
)  # fmt: skip


@FUZZ
@given(
    edits=st.lists(
        st.tuples(st.floats(min_value=0, max_value=1), st.integers(0, 3), _EDITS),
        min_size=1,
        max_size=5,
    ),
    truncate=st.one_of(st.none(), st.floats(min_value=0, max_value=1)),
)
def test_random_text_edits_load_or_fail_with_a_config_error(edits, truncate, tmp_path):
    text = EXAMPLE.read_bytes()
    for where, delete, insert in edits:
        at = int(where * len(text))
        text = text[:at] + insert + text[at + delete :]
    if truncate is not None:
        text = text[: int(truncate * len(text))]
    outcome = assert_clean_outcome(_write(tmp_path, text))
    assert outcome in {"ok", "ConfigError", "ModelUriError"}


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty", b"", "expected a mapping"),
        ("list", b"- a\n- b\n", "expected a mapping"),
        ("python tag", b"name: !!python/object/apply:os.system ['echo pwned']\n", "not valid YAML"),
        ("tab indent", b"name: m\n\tdata: {}\n", "not valid YAML"),
        ("NUL in text", b"name: m\x00\n", "not valid YAML"),
        ("unknown field", b"name: m\ndata: {train_uri: a.csv, target: y}\ntrainig: {}\n",
         "trainig: Extra inputs are not permitted"),
        ("bad number", b"name: m\ndata: {train_uri: a.csv, target: y}\n"
         b"training: {holdout_fraction: .inf}\n", "training.holdout_fraction"),
        # PyYAML's int/float constructors index value[0]: an empty tagged scalar raised
        # IndexError, which escaped as a crash (found by the fuzz test in CI).
        ("empty float", b"!!float ", "cannot read tag:yaml.org,2002:float value ''"),
        ("empty int", b"name: !!int\n", "cannot read tag:yaml.org,2002:int value ''"),
        ("sign-only int", b"name: !!int +\n", "cannot read tag:yaml.org,2002:int value '\\+'"),
    ],
)  # fmt: skip
def test_known_bad_files_fail_with_a_config_error_naming_the_file(name, content, message, tmp_path):
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError, match=message) as err:
        load_and_build(path)
    assert str(path) in str(err.value)


def test_a_missing_file_and_a_directory_fail_with_a_config_error(tmp_path):
    from airflow_mlops.factories.config import load_config

    with pytest.raises(ConfigError, match="Cannot read pipeline config"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="Cannot read pipeline config"):
        load_config(tmp_path)


def _alias_bomb(levels: int, fanout: int = 10, merge_keys: bool = False) -> bytes:
    """Nested aliases under ``training.params``: each level refers ``fanout`` times to the
    one below. With ``merge_keys`` the levels are mappings merged with ``<<: [*a, *a, ...]``,
    which PyYAML expands inside the loader itself."""
    lines = ["name: m", "data: {train_uri: a.csv, target: y}", "training:", "  params:"]
    if merge_keys:
        keys = ", ".join(f"k{i}: x" for i in range(fanout))
        lines.append(f"    l0: &l0 {{{keys}}}")
    else:
        lines.append(f"    l0: &l0 [{','.join(['x'] * fanout)}]")
    for i in range(1, levels):
        refs = ",".join([f"*l{i - 1}"] * fanout)
        lines.append(f"    l{i}: &l{i} " + (f"{{<<: [{refs}]}}" if merge_keys else f"[{refs}]"))
    return ("\n".join(lines) + "\n").encode()


_DEEP = b"name: m\ndata: {train_uri: a.csv, target: y}\ntraining: {params: {x: " + b"[" * 3000 + b"]" * 3000 + b"}}\n"  # fmt: skip


@pytest.mark.parametrize(
    "content",
    [
        b"name: m\ndata: {train_uri: a.csv, target: y}\ndescription: \xff\xfe caf\xe9\n",
        "name: m\ndata: {train_uri: a.csv, target: y}\n".encode("utf-16"),
        _DEEP,
        b'name: m\ndata: {train_uri: "a\\0b.csv", target: y}\n',
        b"name: m\ndata: {train_uri: a.csv, target: y}\nmonitoring: true\n",
        b"name: m\ndata: {train_uri: a.csv, target: y}\nmonitoring: every day\n",
        b"name: m\ndata: {train_uri: a.csv, target: y}\ndescription: 2024-02-30\n",
        b"name: m\ndata: {train_uri: a.csv, target: y}\ndescription: !!float abc\n",
        b"name: m\ndata: {train_uri: a.csv, target: y}\ndescription: !!timestamp x\n",
        b"name: m\ndata: {train_uri: a.csv, target: y}\ntraining: {params: {x: &a [*a]}}\n",
    ],
    ids=["latin-1 bytes", "utf-16", "nested 3000 deep", "NUL in a path", "monitoring: true",
         "monitoring: text", "invalid date", "!!float abc", "!!timestamp x", "recursive alias"],
)  # fmt: skip
def test_undecodable_deep_or_misshapen_files_fail_with_a_config_error(content, tmp_path):
    path = _write(tmp_path, content)
    with pytest.raises(ConfigError) as err:
        load_and_build(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("merge_keys", [False, True], ids=["aliases", "merge keys"])
def test_a_yaml_alias_bomb_is_refused_quickly(merge_keys, tmp_path):
    """Before the fix, plain aliases stalled the DAG build and merge keys stalled PyYAML's
    loader itself: 8 levels (~530 bytes) of ``<<: [*l, ...]`` took ~70 s in ``safe_load``."""
    path = _write(tmp_path, _alias_bomb(8, merge_keys=merge_keys))
    assert len(path.read_bytes()) < 2000
    started = time.monotonic()
    with pytest.raises(ConfigError, match="expands to more than") as err:
        load_and_build(path)
    assert time.monotonic() - started < 2.0
    assert str(path) in str(err.value)


@FUZZ
@given(levels=st.integers(1, 9), fanout=st.integers(1, 12), merge_keys=st.booleans())
def test_nested_aliases_of_any_shape_load_or_are_refused_quickly(
    levels, fanout, merge_keys, tmp_path
):
    """Small expansions load (aliases are legitimate YAML); large ones are refused."""
    path = _write(tmp_path, _alias_bomb(levels, fanout, merge_keys))
    assert assert_clean_outcome(path) in {"ok", "ConfigError"}


def test_an_overlong_tag_fails_with_a_config_error(tmp_path):
    raw = {**copy.deepcopy(BASE), "tags": ["x" * 101]}
    with pytest.raises(ConfigError, match="tags"):
        load_and_build(_write(tmp_path, raw))


def test_a_segmented_pipeline_with_batch_prediction_is_refused_clearly(tmp_path):
    """Every segment would write its predictions to the one ``predictions_uri``: refused when
    the file is loaded, naming both fields. Without it, the segmented pipeline builds. (A
    ``BatchPredictionOperator`` in a mapped task group now builds too: ``test_paths.py``.)"""
    raw = {**copy.deepcopy(BASE), "segments": {"column": "group", "values": ["a", "b"]}}
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError, match="predictions_uri") as err:
        load_and_build(path)
    assert "segments" in str(err.value) and str(path) in str(err.value)
    del raw["data"]["predictions_uri"]
    assert load_and_build(_write(tmp_path, raw)) == "ok"
