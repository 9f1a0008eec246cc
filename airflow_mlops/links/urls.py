"""Addresses of MLflow UI pages, shared by the extra links and the MLOps page.

No Airflow import: the MLOps page's registry reader (:mod:`airflow_mlops.plugins.model_overview`)
uses these too, and stays importable without Airflow.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

__all__ = ["mlflow_page_url", "mlflow_ui_base_url"]


def mlflow_ui_base_url(tracking_uri: str | None) -> str | None:
    """The MLflow UI address for ``tracking_uri``, or ``None`` when it has no web UI.

    Only ``http(s)://`` tracking servers have a UI; user info (credentials) is dropped, as are
    query strings and fragments.
    """
    if not tracking_uri:
        return None
    parts = urlsplit(tracking_uri.strip())
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return None
    host = parts.hostname
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def mlflow_page_url(base: str | None, *route: tuple[str, Any]) -> str | None:
    """``<base>/#/<word>/<id>/…`` for ``route`` = ``(word, id)`` pairs, ids escaped.

    ``None`` when there is no base or an id is missing (``None`` or ``""``): a link to half a
    page would only mislead. Example: ``mlflow_page_url(base, ("models", "churn"),
    ("versions", 3))`` is the page of version 3 of ``churn``.
    """
    if not base or any(value in (None, "") for _, value in route):
        return None
    path = "/".join(f"{word}/{_segment(value)}" for word, value in route)
    return f"{base}/#/{path}"


def _segment(value: Any) -> str:
    """One URL path segment: every reserved character (including '/') is escaped."""
    return quote(str(value), safe="")
