"""Model-loading safety: only registry URIs of the configured registry are accepted."""

from __future__ import annotations

import os

import pytest

from airflow_mlops.core.errors import ModelUriError
from airflow_mlops.core.model_uri import (
    model_uri_for,
    parse_model_uri,
    safe_report_uri,
    validate_model_uri,
)

VALID = [
    ("models:/churn@champion", "models:/churn@champion"),
    ("models:/churn/3", "models:/churn/3"),
    ("models:/churn/007", "models:/churn/7"),
    ("models:/m-0123456789abcdef0123456789abcdef", "models:/m-0123456789abcdef0123456789abcdef"),
    ("models:/my.model-v2_b@challenger-1", "models:/my.model-v2_b@challenger-1"),
    ("models:/Churn Model@champion", "models:/Churn Model@champion"),
    ("MODELS:/churn/1", "models:/churn/1"),
    ("models:/modèle@champion", "models:/modèle@champion"),
]


@pytest.mark.parametrize(("uri", "canonical"), VALID)
def test_valid_forms_are_accepted_and_canonicalised(uri: str, canonical: str) -> None:
    assert validate_model_uri(uri) == canonical


def test_parse_splits_the_parts() -> None:
    alias = parse_model_uri("models:/churn@champion")
    assert (alias.name, alias.alias, alias.version, alias.model_id) == (
        "churn",
        "champion",
        None,
        None,
    )
    assert alias.is_alias and not alias.is_version
    version = parse_model_uri("models:/churn/12")
    assert (version.name, version.version) == ("churn", 12)
    logged = parse_model_uri("models:/m-0123456789abcdef0123456789abcdef")
    assert logged.is_logged_model and logged.name is None


# Each payload with a fragment of the reason the error must name.
REFUSED = [
    # schemes other than the registry
    ("file:///etc/passwd", "file://"),
    ("file://localhost/etc/passwd", "file://"),
    ("runs:/0123456789abcdef/model", "runs:/"),
    ("s3://bucket/model", "scheme 's3'"),
    ("http://evil.example/model", "scheme 'http'"),
    ("mlflow-artifacts:/0/abc/artifacts/model", "scheme 'mlflow-artifacts'"),
    ("models:churn/1", "must be followed by '/'"),
    ("churn/1", "no scheme"),
    ("churn", "no scheme"),
    # local paths
    ("/etc/passwd", "absolute path"),
    ("//proc/self/root/etc/passwd", "absolute path"),
    ("~/models/churn", "local path"),
    ("./model", "local path"),
    # traversal
    ("models:/../../etc/passwd", "'..'"),
    ("models:/churn/../1", "'..'"),
    ("models:/churn/1/..", "'..'"),
    ("models:/..@champion", "'..'"),
    ("models:/a..b@champion", "'..'"),
    ("models:/churn\uff0e\uff0e/1", "'..'"),  # full-width dots normalise to '..'
    ("models:/churn/1/../../../../proc/self/root", "'..'"),
    # encodings, fragments, queries, backslashes
    ("models:/%2e%2e/%2e%2e/etc/passwd", "percent-encoding"),
    ("models:/churn%2F1", "percent-encoding"),
    ("models:/churn%40champion", "percent-encoding"),
    ("models:/churn/1#/../../etc", "'#'"),
    ("models:/churn@champion#x", "'#'"),
    ("models:/churn/1?path=/etc/passwd", "'?'"),
    ("models:/churn\\..\\..\\etc", "backslash"),
    ("models:\\churn\\1", "backslash"),
    # foreign hosts and authorities
    ("models://otherhost/churn/1", "host 'otherhost'"),
    ("models://evil.example:5000/churn@champion", "host 'evil.example:5000'"),
    ("models://profile@databricks/churn/1", "host 'profile@databricks'"),
    ("models:///churn/1", "empty host"),
    ("models:////proc/self/root/etc/passwd", "empty host"),
    ("models://proc/self/root/etc/passwd", "host 'proc'"),
    # empty parts and shape
    ("", "empty"),
    ("models:/", "empty path segment"),
    ("models:/churn/", "empty path segment"),
    ("models:/churn//1", "empty path segment"),
    ("models:/@champion", "model name is empty"),
    ("models:/churn@", "alias ''"),
    ("models:/churn/1/2", "3 path segments"),
    ("models:/churn", "neither a version"),
    ("models:/churn/latest", "'latest'"),
    ("models:/churn/Production", "stages are deprecated"),
    ("models:/churn/0", "start at 1"),
    ("models:/churn/-1", "not a version number"),
    ("models:/a@b@champion", "more than one '@'"),
    ("models:/churn@champ!on", "alias 'champ!on'"),
    ("models:/ch$urn@champion", "character '$'"),
    ("models:/ churn@champion", "invalid"),
    ("models:/churn @champion", "invalid"),
    ("models:/m-short", "neither a version"),
    # control characters and whitespace
    ("models:/churn\x00/1", "U+0000"),
    ("models:/churn/1\n", "U+000A"),
    ("models:/churn\t@champion", "U+0009"),
    ("models:/churn\u200b@champion", "U+200B"),
    ("models:/churn\u202e@champion", "U+202E"),
    (" models:/churn/1", "whitespace"),
    ("models:/churn/1 ", "whitespace"),
]


@pytest.mark.parametrize(("uri", "reason"), REFUSED, ids=[repr(u)[:60] for u, _ in REFUSED])
def test_refused_payloads_name_the_reason(uri: str, reason: str) -> None:
    with pytest.raises(ModelUriError) as excinfo:
        validate_model_uri(uri)
    message = str(excinfo.value)
    assert reason in message, message
    assert "Refused model URI" in message


def test_non_string_is_refused() -> None:
    with pytest.raises(ModelUriError, match="expected a string"):
        validate_model_uri(None)  # type: ignore[arg-type]


def test_model_uri_error_is_a_value_error() -> None:
    # Callers catching ValueError (e.g. parameter validation) also catch refusals.
    with pytest.raises(ValueError):
        validate_model_uri("file:///etc/passwd")


def test_host_of_the_configured_registry_is_accepted_and_dropped() -> None:
    registry = "http://user:secret@mlflow.internal:5000"
    assert (
        validate_model_uri("models://mlflow.internal:5000/churn/2", allowed_registry_uri=registry)
        == "models:/churn/2"
    )
    # Same host on a different port is another server.
    with pytest.raises(ModelUriError, match="not the configured registry"):
        validate_model_uri("models://mlflow.internal:6000/churn/2", allowed_registry_uri=registry)
    # The registry's credentials are never part of what is compared (or echoed).
    with pytest.raises(ModelUriError) as excinfo:
        validate_model_uri("models://user:secret@mlflow.internal:5000/churn/2")
    assert "configured registry" in str(excinfo.value)


def test_host_without_a_model_is_refused() -> None:
    with pytest.raises(ModelUriError, match="no model"):
        validate_model_uri("models://mlflow:5000", allowed_registry_uri="http://mlflow:5000")


def test_model_uri_for_builds_validated_uris() -> None:
    assert model_uri_for("churn", alias="champion") == "models:/churn@champion"
    assert model_uri_for("churn", version="4") == "models:/churn/4"
    with pytest.raises(ModelUriError, match="exactly one"):
        model_uri_for("churn")
    with pytest.raises(ModelUriError, match=r"'\.\.'"):
        model_uri_for("..", alias="champion")


# -- report paths --------------------------------------------------------------------------


def test_safe_report_uri_accepts_paths_inside_the_base(tmp_path) -> None:
    base = tmp_path / "reports"
    base.mkdir()
    assert safe_report_uri("churn/eval.json", str(base)) == str(base / "churn" / "eval.json")
    assert safe_report_uri(str(base / "x.html"), str(base)) == str(base / "x.html")


@pytest.mark.parametrize(
    "name",
    ["../escape.json", "churn/../../escape.json", "/etc/passwd", ".", "a\\..\\b", "x\x00y"],
)
def test_safe_report_uri_refuses_escapes(tmp_path, name: str) -> None:
    base = tmp_path / "reports"
    base.mkdir()
    with pytest.raises(ModelUriError, match="Refused report"):
        safe_report_uri(name, str(base))


def test_safe_report_uri_refuses_dot_segments_even_when_they_resolve_inside(tmp_path) -> None:
    """One rule for "is this URI under that root" (core.storage.is_under_root): '.'/'..'
    segments are refused outright, as the MLOps page and the data prefixes refuse them."""
    base = tmp_path / "reports"
    base.mkdir()
    for name in ("churn/../eval.json", "./eval.json", str(base / "churn" / ".." / "eval.json")):
        with pytest.raises(ModelUriError, match="Refused report path"):
            safe_report_uri(name, str(base))


def test_safe_report_uri_follows_symlinks(tmp_path) -> None:
    base = tmp_path / "reports"
    base.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, base / "link")
    with pytest.raises(ModelUriError, match="outside"):
        safe_report_uri("link/eval.json", str(base))


def test_safe_report_uri_on_s3() -> None:
    base = "s3://bucket/reports"
    assert safe_report_uri("s3://bucket/reports/churn/a.json", base) == (
        "s3://bucket/reports/churn/a.json"
    )
    for bad in (
        "s3://other/reports/a.json",
        "s3://bucket/reports/../secrets/a.json",
        "s3://bucket/reportsX/a.json",
        "s3://bucket/reports//a.json",
        "s3://bucket/reports/%2e%2e/a.json",
        "/tmp/a.json",
    ):
        with pytest.raises(ModelUriError, match="Refused report path"):
            safe_report_uri(bad, base)
