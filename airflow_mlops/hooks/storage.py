"""Storage hook: the core ``Storage`` with S3 access from an Airflow AWS connection."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseHook

if TYPE_CHECKING:
    from airflow_mlops.core.storage import Storage


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
        try:
            from airflow.providers.amazon.aws.hooks.s3 import S3Hook
        except ImportError as err:
            raise ImportError(
                "s3:// URIs need the Amazon provider: pip install 'airflow-provider-mlops[s3]'."
            ) from err
        return S3Hook(aws_conn_id=self.aws_conn_id).get_conn()

    def get_conn(self) -> Storage:
        return self.get_storage()

    def get_storage(self) -> Storage:
        from airflow_mlops.core.storage import Storage

        return Storage(s3_client_factory=self._s3_client)
