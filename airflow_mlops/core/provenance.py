"""Which models the workers may unpickle: only the ones this provider trained.

Loading an MLflow model unpickles it, so whoever can write a model version to the registry
can run code on every worker that loads it. Before any load, the model is downloaded into a
private folder, checked, and only then loaded *from that folder*, so the bytes checked are
the bytes unpickled (no window between the check and the load).

Two checks, the strong one when a signing key is configured:

- **Signature** (``[mlops] signing_conn_id``, default connection ``mlops_signing``, whose
  password is the key). Training signs the model it logged: ``mlops.signature`` =
  HMAC-SHA256 over :func:`artifact_digest` of the model's files as stored in MLflow.
  Registration copies the tag onto the version. A load recomputes the digest of the
  downloaded files and refuses a missing or wrong signature: a hand-registered model, or a
  signed one whose files were re-uploaded, is refused. Only holders of the key can sign.
- **Provenance** (no signing connection): the version must carry the tags this provider's
  registration writes (``mlops.idempotency_key``, ``mlops.source_run_id``), and its run must
  be one of this provider's training runs that logged exactly this model. Anyone with MLflow
  write access can forge tags, so this only stops accidents and casual substitution.

Anything refused raises :class:`~airflow_mlops.core.errors.UntrustedModelError` naming the
model, the version and why, unless the task opted in with ``trust_unsigned_models``.

The signature tag names live in :mod:`airflow_mlops.core.lineage` with the other tags; an
alias URI is resolved by :func:`airflow_mlops.core.registry.current_alias_version`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow_mlops.core.errors import UntrustedModelError
from airflow_mlops.core.lineage import (
    TAG_ARTIFACT_DIGEST,
    TAG_IDEMPOTENCY_KEY,
    TAG_MODEL_URI,
    TAG_SIGNATURE,
    TAG_SOURCE_MODEL_URI,
    TAG_SOURCE_RUN_ID,
    TAG_STAGE,
)
from airflow_mlops.core.model_uri import ModelUri, ModelUriError, parse_model_uri
from airflow_mlops.core.storage import sha256_file

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

__all__ = [
    "SIGNATURE_SCHEME",
    "ModelTrust",
    "artifact_digest",
    "download_model",
    "reusing_model_downloads",
    "sign_logged_model",
    "signature_for",
    "verified_local_copy",
]

log = logging.getLogger(__name__)

SIGNATURE_SCHEME = "hmac-sha256:v1"
# MLflow writes this file into the download of a registered version (name and version, YAML);
# it is not part of what was logged, and nothing unpickles it.
_DOWNLOAD_ONLY_FILES = frozenset({"registered_model_meta"})
_OPT_IN_HINT = (
    "Only models this provider trained load; set trust_unsigned_models=True on the task to "
    "load it anyway (see docs/security.md)"
)


@dataclass(frozen=True)
class ModelTrust:
    """What a task accepts: a signing key (strong check), else provenance tags; or anything."""

    signing_key: bytes | None = field(default=None, repr=False)
    trust_unsigned: bool = False

    @property
    def mode(self) -> str:
        if self.trust_unsigned:
            return "trust-unsigned"
        return "signature" if self.signing_key else "provenance"


@dataclass(frozen=True)
class _Target:
    """What the registry says about the model to load."""

    label: str
    download_uri: str
    tags: Mapping[str, str]
    run_id: str | None
    model_id: str | None
    source: str | None


# -- digest and signature --------------------------------------------------------------------


def artifact_digest(model_dir: str | os.PathLike[str]) -> str:
    """sha256 over the sorted ``relative/path\\0sha256-of-bytes\\n`` lines of every file.

    Symlinks are refused (a stored model has none, and one could point outside the folder).
    """
    root = Path(model_dir)
    lines = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root).as_posix()
        if path.is_symlink():
            raise UntrustedModelError(f"model folder {root} holds a symlink {relative!r}")
        if not path.is_file() or relative in _DOWNLOAD_ONLY_FILES:
            continue
        lines.append(f"{relative}\0{sha256_file(path)}\n")
    if not lines:
        raise UntrustedModelError(f"model folder {root} holds no files")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def signature_for(key: bytes, digest: str) -> str:
    """``hmac-sha256:v1:<hex>`` of the artifact digest under ``key``."""
    mac = hmac.new(key, f"airflow-mlops/model\n{digest}".encode(), hashlib.sha256)
    return f"{SIGNATURE_SCHEME}:{mac.hexdigest()}"


def download_model(model_uri: str, dst_dir: str) -> str:
    """Copy the model's files into ``dst_dir`` (no unpickling); return the local folder."""
    import mlflow.artifacts

    return mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=dst_dir)


# The downloads of the current ``reusing_model_downloads`` block: (temp root, model id ->
# folder). A context variable, so each thread (a batched segment) has its own.
_DOWNLOADS: ContextVar[tuple[str, dict[str, str]] | None] = ContextVar(
    "mlops_model_downloads", default=None
)


@contextmanager
def reusing_model_downloads() -> Iterator[None]:
    """Within this block each logged model is fetched from MLflow once: a later load of the
    same model (the serving check of the version evaluation just scored, by its registry
    name) copies the first download's files. Every copy is checked again under the caller's
    trust (the signature over its files, or the provenance tags), exactly as a download is."""
    with tempfile.TemporaryDirectory(prefix="mlops-model-downloads-") as root:
        token = _DOWNLOADS.set((root, {}))
        try:
            yield
        finally:
            _DOWNLOADS.reset(token)


def _fetch(download_uri: str, model_id: str | None, dst_dir: str) -> str:
    """The model's files in ``dst_dir``: downloaded, or copied from this block's download of
    the same logged model."""
    cache = _DOWNLOADS.get()
    if cache is None or not model_id:
        return download_model(download_uri, dst_dir)
    root, folders = cache
    cached = folders.get(model_id)
    if cached is None:
        cached = download_model(f"models:/{model_id}", str(Path(root, model_id)))
        folders[model_id] = cached
    shutil.copytree(cached, dst_dir, dirs_exist_ok=True)
    return dst_dir


def sign_logged_model(client: MlflowClient, model_id: str, key: bytes, work_dir: str) -> str:
    """Sign the files MLflow stores for logged model ``model_id``; tag it; return the tag.

    The files are read back from MLflow, not from the training process's memory, so the
    signature covers exactly what a later load downloads.
    """
    local = _fetch(f"models:/{model_id}", model_id, work_dir)
    digest = artifact_digest(local)
    signature = signature_for(key, digest)
    client.set_logged_model_tags(model_id, {TAG_SIGNATURE: signature, TAG_ARTIFACT_DIGEST: digest})
    return signature


# -- the check before any load ---------------------------------------------------------------


def verified_local_copy(
    client: MlflowClient, model_uri: str, dst_dir: str, trust: ModelTrust | None = None
) -> str:
    """Download ``model_uri`` into ``dst_dir``, check it under ``trust``; return the folder.

    Load the model from the returned folder only. Raises :class:`UntrustedModelError`.
    """
    trust = trust or ModelTrust()
    target = _describe(client, parse_model_uri(model_uri))
    if trust.trust_unsigned:
        log.warning(
            "Loading %s without checking who created it (trust_unsigned_models).", target.label
        )
        return _fetch(target.download_uri, target.model_id, dst_dir)
    if trust.signing_key is None:
        _check_provenance(client, target)
        return _fetch(target.download_uri, target.model_id, dst_dir)
    signature = target.tags.get(TAG_SIGNATURE) or _logged_model_tags(client, target).get(
        TAG_SIGNATURE
    )
    if not signature:
        raise _refuse(target, f"it carries no {TAG_SIGNATURE} tag (not signed by this provider)")
    local = _fetch(target.download_uri, target.model_id, dst_dir)
    expected = signature_for(trust.signing_key, artifact_digest(local))
    if not hmac.compare_digest(signature.encode(), expected.encode()):
        raise _refuse(
            target,
            f"its files do not match its {TAG_SIGNATURE} (changed after signing, or signed "
            "with another key)",
        )
    log.info("Signature of %s verified.", target.label)
    return local


def _refuse(target: _Target, why: str) -> UntrustedModelError:
    return UntrustedModelError(f"Refused to load {target.label}: {why}. {_OPT_IN_HINT}.")


def _describe(client: MlflowClient, parsed: ModelUri) -> _Target:
    if parsed.model_id is not None:
        logged = client.get_logged_model(parsed.model_id)
        return _Target(
            label=f"logged model {parsed.model_id}",
            download_uri=parsed.uri,
            tags=dict(logged.tags or {}),
            run_id=logged.source_run_id or None,
            model_id=parsed.model_id,
            source=parsed.uri,
        )
    assert parsed.name is not None
    number = str(parsed.version) if parsed.alias is None else _alias_version(client, parsed)
    version = client.get_model_version(parsed.name, number)
    return _Target(
        label=f"model {parsed.name!r} version {version.version}",
        download_uri=f"models:/{parsed.name}/{version.version}",
        tags=dict(version.tags or {}),
        run_id=version.run_id or None,
        model_id=getattr(version, "model_id", None) or _logged_model_id(version.source),
        source=version.source,
    )


def _logged_model_id(source: str | None) -> str | None:
    """The logged model a version was registered from (``models:/m-<id>``), else None: the
    registry's answer may omit ``model_id`` even then."""
    try:
        return parse_model_uri(source).model_id if source else None
    except ModelUriError:  # a run or storage path: not a logged model
        return None


def _alias_version(client: MlflowClient, parsed: ModelUri) -> str:
    """The version ``parsed``'s alias points at; a missing alias or model is an error.

    Raised as MLflow's own not-found error, the one evaluation and the serving check handle
    for a model the registry cannot provide. The registry module imports MLflow at module
    level, so it is imported here: this module stays light for ``hooks.signing``.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    from airflow_mlops.core.registry import current_alias_version

    assert parsed.name is not None and parsed.alias is not None
    version = current_alias_version(client, parsed.name, parsed.alias)
    if version is None:
        raise MlflowException(
            f"registered model {parsed.name!r} has no alias {parsed.alias!r} "
            f"(or does not exist): {parsed.uri} names no version to load",
            error_code=RESOURCE_DOES_NOT_EXIST,
        )
    return version


def _logged_model_tags(client: MlflowClient, target: _Target) -> Mapping[str, str]:
    if not target.model_id or target.download_uri.startswith("models:/m-"):
        return {}
    return dict(client.get_logged_model(target.model_id).tags or {})


def _check_provenance(client: MlflowClient, target: _Target) -> None:
    """The weaker check: the tags this provider's training and registration write."""
    is_logged_model = target.download_uri.startswith("models:/m-")
    expected_model_uri = target.download_uri if is_logged_model else None
    if not is_logged_model:
        missing = [t for t in (TAG_IDEMPOTENCY_KEY, TAG_SOURCE_RUN_ID) if not target.tags.get(t)]
        if missing:
            raise _refuse(target, f"it lacks the provider's registration tags {missing}")
        if target.tags[TAG_SOURCE_RUN_ID] != target.run_id:
            raise _refuse(
                target,
                f"its {TAG_SOURCE_RUN_ID} {target.tags[TAG_SOURCE_RUN_ID]!r} is not its run "
                f"{target.run_id!r}",
            )
        expected_model_uri = target.tags.get(TAG_SOURCE_MODEL_URI) or target.source
        if target.source != expected_model_uri:
            raise _refuse(target, f"its source {target.source!r} is not {expected_model_uri!r}")
    if not target.run_id:
        raise _refuse(target, "it names no training run")
    run_tags = _run_tags(client, target)
    if run_tags.get(TAG_STAGE) != "training" or not run_tags.get(TAG_IDEMPOTENCY_KEY):
        raise _refuse(target, f"its run {target.run_id} is not a training run of this provider")
    if run_tags.get(TAG_MODEL_URI) != expected_model_uri:
        raise _refuse(
            target,
            f"its run {target.run_id} logged {run_tags.get(TAG_MODEL_URI)!r}, not "
            f"{expected_model_uri!r}",
        )


def _run_tags(client: MlflowClient, target: _Target) -> Mapping[str, Any]:
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(str(target.run_id)).data.tags
    except MlflowException as err:
        raise _refuse(target, f"its run {target.run_id} cannot be read ({err.message})") from err
