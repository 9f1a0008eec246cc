"""The model signing key, from an Airflow connection (see ``core.provenance``).

``[mlops] signing_conn_id`` names the connection (default ``mlops_signing``); its password is
the HMAC key. With the default name and no such connection, models are checked by their
provenance tags only (weaker, logged once per process). A connection named explicitly in the
config must exist: a typo must not silently downgrade the check.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from airflow_mlops.core.errors import ConfigError

if TYPE_CHECKING:
    from airflow_mlops.core.provenance import ModelTrust

__all__ = [
    "DEFAULT_SIGNING_CONN_ID",
    "MIN_KEY_CHARS",
    "model_signing_key",
    "model_trust",
    "signing_conn_id",
]

log = logging.getLogger(__name__)

DEFAULT_SIGNING_CONN_ID = "mlops_signing"
MIN_KEY_CHARS = 16
_warned_no_key = False


def signing_conn_id() -> tuple[str, bool]:
    """``(connection id, whether it was configured explicitly)``."""
    from airflow.sdk import conf

    configured = conf.get("mlops", "signing_conn_id", fallback=None)
    return (configured or DEFAULT_SIGNING_CONN_ID), bool(configured)


def model_signing_key() -> bytes | None:
    """The signing key, or None when no signing connection exists (provenance check only)."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException
    from airflow.sdk.log import mask_secret

    global _warned_no_key
    conn_id, explicit = signing_conn_id()
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        if explicit:
            raise ConfigError(
                f"[mlops] signing_conn_id names the connection {conn_id!r}, which does not exist"
            ) from None
        if not _warned_no_key:
            log.warning(
                "No %r connection: models are not signed, and loads check provenance tags "
                "only (anyone with MLflow write access can forge them). See docs/security.md.",
                conn_id,
            )
            _warned_no_key = True
        return None
    password = conn.password or ""
    if len(password) < MIN_KEY_CHARS:
        raise ConfigError(
            f"connection {conn_id!r}: its password is the model signing key and must hold at "
            f"least {MIN_KEY_CHARS} characters (it has {len(password)})"
        )
    mask_secret(password)
    return password.encode()


def model_trust(trust_unsigned_models: bool = False) -> ModelTrust:
    """What a task accepts to load: see :class:`airflow_mlops.core.provenance.ModelTrust`."""
    from airflow_mlops.core.provenance import ModelTrust

    if trust_unsigned_models:
        return ModelTrust(trust_unsigned=True)
    return ModelTrust(signing_key=model_signing_key())
