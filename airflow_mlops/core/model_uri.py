"""Which model URIs may be loaded, and which report paths may be written.

MLflow resolves many URI schemes (``file://``, ``runs:/``, absolute paths, ``models://host/...``)
and has a history of path-traversal CVEs in how it joins them (e.g. CVE-2023-1177,
CVE-2023-6909, CVE-2024-1483, CVE-2024-2928: ``..``, ``%2e%2e``, ``#``/``?`` and
``//proc/self/root`` tricks). A pipeline that loads whatever URI a DAG parameter or an XCom
hands it inherits all of them. So this module accepts only the three registry forms and
refuses everything else with an error that names the reason:

* ``models:/<name>@<alias>``  a registered model alias (``champion``)
* ``models:/<name>/<version>``  one registered version (a positive integer)
* ``models:/m-<id>``  an MLflow 3 logged model

The check is an allow-list (a grammar), not a deny-list: the named refusals exist only to give
clear messages; anything that does not match the grammar is refused too.
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import urlsplit

from airflow_mlops.core.errors import ModelUriError
from airflow_mlops.core.storage import UncheckableUriError, is_under_root, normalize_uri

MODELS_SCHEME = "models"
_PREFIX = "models:/"

# Registered model names: MLflow only forbids '/' and ':'; we are stricter because the name
# ends up in artifact paths. Letters/digits (any script), '_', '-', '.', and inner spaces.
_NAME_RE = re.compile(r"^\w(?:[\w.\- ]{0,254}[\w.\-])?$")
# Mirrors MLflow's alias rule (alphanumerics, '_' and '-'), capped at MLflow's 255 chars.
_ALIAS_RE = re.compile(r"^[\w\-]{1,255}$")
# MLflow 3 logged-model ids are "m-" + 32 hex chars; allow other alphanumeric lengths in case a
# store formats them differently, but never anything that could be a path.
_MODEL_ID_RE = re.compile(r"^m-[0-9A-Za-z]{8,64}$")
_VERSION_RE = re.compile(r"^[0-9]{1,18}$")

# Unicode categories refused anywhere in a URI: control, format (zero-width, bidi overrides),
# surrogates, private use, line/paragraph separators.
_REFUSED_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"}


@dataclass(frozen=True)
class ModelUri:
    """A validated model URI split into its parts. Exactly one of the three forms is set."""

    uri: str
    name: str | None = None
    version: int | None = None
    alias: str | None = None
    model_id: str | None = None

    @property
    def is_alias(self) -> bool:
        return self.alias is not None

    @property
    def is_version(self) -> bool:
        return self.version is not None

    @property
    def is_logged_model(self) -> bool:
        return self.model_id is not None


def _refuse(uri: str, reason: str) -> ModelUriError:
    return ModelUriError(
        f"Refused model URI {uri!r}: {reason}. Only registry URIs load: "
        "'models:/<name>@<alias>', 'models:/<name>/<version>' or 'models:/m-<id>'."
    )


def _check_characters(uri: str) -> None:
    for char in uri:
        if unicodedata.category(char) in _REFUSED_CATEGORIES:
            raise _refuse(uri, f"it contains the control/format character U+{ord(char):04X}")
    if uri != uri.strip():
        raise _refuse(uri, "it has leading or trailing whitespace")
    if "\\" in uri:
        raise _refuse(uri, "it contains a backslash (a Windows path separator)")
    if "%" in uri:
        raise _refuse(uri, "it contains '%' (percent-encoding such as '%2e' hides traversal)")
    if "#" in uri:
        raise _refuse(uri, "it contains '#' (a URI fragment)")
    if "?" in uri:
        raise _refuse(uri, "it contains '?' (a URI query)")
    # Full-width dots and slashes normalise to '.'/'/' under NFKC: refuse both spellings.
    if ".." in unicodedata.normalize("NFKC", uri):
        raise _refuse(uri, "it contains '..' (path traversal)")


def _check_scheme(uri: str) -> str:
    """Return the URI with a lower-case ``models:/`` prefix, or refuse it naming what it is."""
    if uri.startswith("/"):
        raise _refuse(uri, "it is an absolute path, not a registry URI")
    if uri.startswith("~") or uri.startswith("."):
        raise _refuse(uri, "it is a local path, not a registry URI")
    scheme, sep, _ = uri.partition(":")
    if not sep or not scheme:
        raise _refuse(uri, "it has no scheme (a bare name or relative path)")
    lowered = scheme.lower()
    if lowered == "file":
        raise _refuse(uri, "file:// URIs read arbitrary local files")
    if lowered == "runs":
        raise _refuse(uri, "runs:/ URIs bypass the registry; register the model and use models:/")
    if lowered != MODELS_SCHEME:
        raise _refuse(uri, f"scheme {scheme!r} is not 'models'")
    rest = uri[len(scheme) + 1 :]
    if not rest.startswith("/"):
        raise _refuse(uri, "'models:' must be followed by '/'")
    return _PREFIX + rest.removeprefix("/")


def _registry_authority(allowed_registry_uri: str | None) -> str | None:
    if not allowed_registry_uri:
        return None
    netloc = urlsplit(allowed_registry_uri).netloc
    # Never compare credentials: only host[:port] identifies the registry.
    return netloc.rpartition("@")[2].lower() or None


def _strip_authority(uri: str, canonical: str, allowed_registry_uri: str | None) -> str:
    """Handle ``models://<authority>/...``: refused unless it names the configured registry."""
    rest = canonical[len(_PREFIX) :]
    if not rest.startswith("/"):
        return rest
    authority, slash, path = rest[1:].partition("/")
    if not authority:
        raise _refuse(uri, "it has an empty host ('models:///...')")
    allowed = _registry_authority(allowed_registry_uri)
    if allowed is None or authority.lower() != allowed:
        configured = f"the configured registry is {allowed!r}" if allowed else "no host is allowed"
        raise _refuse(uri, f"host {authority!r} is not the configured registry ({configured})")
    if not slash:
        raise _refuse(uri, "it names a registry host but no model")
    # The registry is the configured one anyway: load through it with a host-less URI.
    return path


def _parse_path(uri: str, path: str) -> ModelUri:
    parts = path.split("/")
    if any(part == "" for part in parts):
        raise _refuse(uri, "it has an empty path segment")
    if len(parts) > 2:
        raise _refuse(uri, f"it has {len(parts)} path segments; at most 2 (name/version)")
    if len(parts) == 2:
        name, suffix = parts
        _check_name(uri, name)
        if suffix.lower() == "latest":
            raise _refuse(uri, "'latest' is not reproducible; use an alias or a version number")
        if not _VERSION_RE.match(suffix):
            raise _refuse(
                uri, f"{suffix!r} is not a version number (stages are deprecated; use an alias)"
            )
        version = int(suffix)
        if version < 1:
            raise _refuse(uri, "model versions start at 1")
        return ModelUri(uri=f"{_PREFIX}{name}/{version}", name=name, version=version)
    (single,) = parts
    if "@" in single:
        name, _, alias = single.rpartition("@")
        if "@" in name:
            raise _refuse(uri, "it contains more than one '@'")
        _check_name(uri, name)
        if not _ALIAS_RE.match(alias):
            raise _refuse(uri, f"alias {alias!r} may only hold letters, digits, '_' and '-'")
        return ModelUri(uri=f"{_PREFIX}{name}@{alias}", name=name, alias=alias)
    if _MODEL_ID_RE.match(single):
        return ModelUri(uri=f"{_PREFIX}{single}", model_id=single)
    raise _refuse(
        uri,
        f"{single!r} names neither a version ('/<version>'), an alias ('@<alias>') nor 'm-<id>'",
    )


def _check_name(uri: str, name: str) -> None:
    if not name:
        raise _refuse(uri, "the model name is empty")
    if len(name) > 256:
        raise _refuse(uri, f"the model name is {len(name)} characters long; at most 256")
    if not _NAME_RE.match(name):
        bad = next((c for c in name if not (c.isalnum() or c in "_.- ")), None)
        detail = (
            f"character {bad!r} is not allowed"
            if bad
            else "it must start with a letter, digit or '_' and must not end with a space"
        )
        raise _refuse(uri, f"model name {name!r} is invalid ({detail})")


def parse_model_uri(uri: str, *, allowed_registry_uri: str | None = None) -> ModelUri:
    """Validate ``uri`` and split it into name/version/alias/model id.

    ``allowed_registry_uri`` is the configured registry (e.g. ``http://mlflow:5000``): a URI that
    spells a host (``models://mlflow:5000/name/1``) is accepted only for that host, and the host is
    dropped so the model loads through the configured registry. Any other host is refused.
    """
    if not isinstance(uri, str):
        raise ModelUriError(
            f"Refused model URI {uri!r}: expected a string, got {type(uri).__name__}."
        )
    if not uri:
        raise ModelUriError("Refused model URI '': it is empty.")
    _check_characters(uri)
    canonical = _check_scheme(uri)
    path = _strip_authority(uri, canonical, allowed_registry_uri)
    return _parse_path(uri, path)


def validate_model_uri(uri: str, *, allowed_registry_uri: str | None = None) -> str:
    """Return the canonical form of ``uri`` if it is a loadable registry URI, else raise.

    Raises :class:`~airflow_mlops.core.errors.ModelUriError` naming why the URI is refused.
    """
    return parse_model_uri(uri, allowed_registry_uri=allowed_registry_uri).uri


def model_uri_for(name: str, *, version: int | str | None = None, alias: str | None = None) -> str:
    """Build (and validate) ``models:/<name>/<version>`` or ``models:/<name>@<alias>``."""
    if (version is None) == (alias is None):
        raise ModelUriError("Give exactly one of version or alias to build a model URI.")
    suffix = f"/{version}" if version is not None else f"@{alias}"
    return validate_model_uri(f"{_PREFIX}{name}{suffix}")


# -- report/output paths ------------------------------------------------------------------


def safe_report_uri(uri: str, base: str) -> str:
    """Return ``uri`` if it lies strictly inside ``base`` (a local directory or
    ``s3://bucket/prefix``); a relative ``uri`` is taken relative to ``base``.

    Used before writing files whose name is built from user input (model names, run ids), so a
    name like ``../../etc`` cannot write outside the report directory. The check is
    :func:`airflow_mlops.core.storage.is_under_root`: no ``.``/``..``/empty segments, whole
    segments, the same bucket, symlinks resolved for local paths (the resolved path is
    returned). Raises :class:`ModelUriError` naming the escape.
    """
    for value, label in ((uri, "path"), (base, "base")):
        if not value:
            raise ModelUriError(f"Refused report {label}: it is empty.")
        if any(unicodedata.category(c) in _REFUSED_CATEGORIES for c in value):
            raise ModelUriError(
                f"Refused report {label} {value!r}: it contains a control character."
            )
        if "\\" in value:
            raise ModelUriError(f"Refused report {label} {value!r}: it contains a backslash.")
    if base.startswith("s3://") or uri.startswith("s3://"):
        if not (uri.startswith("s3://") and base.startswith("s3://")):
            raise ModelUriError(
                f"Refused report path {uri!r}: it and its base {base!r} must both be s3:// URIs."
            )
        if uri.endswith("/"):
            raise ModelUriError(f"Refused report path {uri!r}: it names a folder, not a file.")
        candidate, real_base = uri, base
    elif "://" in uri or "://" in base:
        raise ModelUriError(
            f"Refused report path {uri!r}: only local paths and s3:// URIs are supported."
        )
    else:
        real_base = os.path.realpath(base)
        candidate = uri if os.path.isabs(uri) else os.path.join(real_base, uri)
    try:
        inside = is_under_root(candidate, real_base)
        resolved, root = normalize_uri(candidate), normalize_uri(real_base)
    except UncheckableUriError as err:
        raise ModelUriError(f"Refused report path {uri!r}: {err}.") from None
    if not inside or resolved.rstrip("/") == root.rstrip("/"):
        raise ModelUriError(
            f"Refused report path {uri!r}: it resolves to {resolved!r}, outside {root!r}."
        )
    return resolved
