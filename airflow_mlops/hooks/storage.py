"""Storage hook: the core ``Storage`` with S3 access from an Airflow AWS connection, and the
fsspec filesystem of a data URI for ``core.datasets``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

    from airflow_mlops.core.storage import Storage

__all__ = ["StorageHook"]

_S3_SCHEMES = frozenset({"s3", "s3a", "s3n"})


class StorageHook(BaseHook):
    """Read/write data and reports by URI (local path or ``s3://``).

    The S3 client comes from the Amazon provider's ``S3Hook`` and is only built when an
    ``s3://`` URI is actually used, so local-only pipelines do not need the ``[s3]`` extra.

    :param aws_conn_id: Airflow AWS connection used for ``s3://`` URIs.
    """

    hook_name = "MLOps storage"

    def __init__(self, aws_conn_id: str | None = "aws_default", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.aws_conn_id = aws_conn_id

    def _s3_client(self) -> Any:
        return self._s3_hook().get_conn()

    def get_conn(self) -> Storage:
        return self.get_storage()

    def get_storage(self) -> Storage:
        from airflow_mlops.core.storage import Storage

        return Storage(s3_client_factory=self._s3_client)

    def get_filesystem(self, uri: str, conn_id: str | None = None) -> AbstractFileSystem:
        """The fsspec filesystem for ``uri``, from Airflow's ``ObjectStoragePath``.

        ``s3://`` URIs use :attr:`aws_conn_id`; other schemes use ``conn_id`` (default: their
        provider's default connection) and work when their provider is installed. Without
        ``s3fs`` (its aiobotocore pins an older botocore than the Amazon provider's), S3 goes
        through pyarrow's native S3 filesystem built from the same connection.
        """
        from airflow.sdk import ObjectStoragePath

        scheme = uri.split("://", 1)[0] if "://" in uri else "file"
        if scheme in _S3_SCHEMES:
            try:
                return ObjectStoragePath(uri, conn_id=self.aws_conn_id).fs
            except ImportError:
                return self._arrow_s3_filesystem()
        return ObjectStoragePath(uri, conn_id=conn_id).fs

    def _arrow_s3_filesystem(self) -> AbstractFileSystem:
        """pyarrow's S3 filesystem with the connection's credentials, region and endpoint.

        The credentials are resolved once: build a new filesystem per task, so temporary
        (role) credentials do not outlive their session.
        """
        from fsspec.implementations.arrow import ArrowFSWrapper
        from pyarrow.fs import S3FileSystem

        hook = self._s3_hook()
        credentials = hook.get_credentials()
        options: dict[str, Any] = {"region": hook.conn_region_name or None}
        if credentials is None or credentials.access_key is None:
            options["anonymous"] = True
        else:
            options.update(
                access_key=credentials.access_key,
                secret_key=credentials.secret_key,
                session_token=credentials.token,
            )
        endpoint = hook.conn_config.get_service_endpoint_url(service_name="s3")
        if endpoint:
            options["endpoint_override"] = endpoint
        return ArrowFSWrapper(S3FileSystem(**options))

    def _s3_hook(self) -> Any:
        try:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        except ImportError as err:
            raise ImportError(
                "s3:// URIs need the Amazon provider: pip install 'airflow-provider-mlops[s3]'."
            ) from err
        return S3Hook(aws_conn_id=self.aws_conn_id)
