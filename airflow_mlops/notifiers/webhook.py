"""``SlackWebhookNotifier``: posts ``{"text": ...}`` to a Slack incoming webhook.

The Slack provider is not a dependency of this provider, and an incoming webhook needs
nothing but one HTTPS POST. The URL comes from an Airflow HTTP connection (``host`` such as
``https://hooks.slack.com``, and the secret path ``/services/T…/B…/…`` as its password, which
Airflow masks), never from the pipeline YAML.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from airflow.sdk import BaseHook, BaseNotifier

__all__ = ["SlackWebhookNotifier", "webhook_url"]

#: Seconds to wait for the webhook; the caller retries.
TIMEOUT_SECONDS = 10


def webhook_url(conn: Any) -> str:
    """The webhook URL of an HTTP connection: host (with or without a scheme) + password path."""
    host = (conn.host or "").strip().rstrip("/")
    if not host:
        raise ValueError(f"connection {conn.conn_id!r} has no host: set the webhook's address")
    if "://" not in host:
        port = f":{conn.port}" if conn.port else ""
        host = f"{conn.schema or 'https'}://{host}{port}"
    path = (conn.password or "").strip()
    if path and not path.startswith("/"):
        path = "/" + path
    if not host.startswith(("https://", "http://")):
        raise ValueError(f"connection {conn.conn_id!r}: the webhook must be an http(s) address")
    return host + path


class SlackWebhookNotifier(BaseNotifier):
    """Post ``text`` to the incoming webhook of HTTP connection ``http_conn_id``."""

    template_fields = ("text",)

    def __init__(self, *, http_conn_id: str, text: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.http_conn_id = http_conn_id
        self.text = text

    def notify(self, context: Any) -> None:
        from airflow.sdk.log import mask_secret

        url = webhook_url(BaseHook.get_connection(self.http_conn_id))
        mask_secret(url)
        request = urllib.request.Request(
            url,
            data=json.dumps({"text": self.text}).encode("utf-8"),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        # urlopen raises for a refused connection and for any 4xx/5xx answer.
        with urllib.request.urlopen(request, timeout=TIMEOUT_SECONDS) as response:
            response.read()
