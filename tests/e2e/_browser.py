"""Headless Chromium driven over the DevTools protocol (CDP), with ``websockets`` only.

Just enough of a browser for the end-to-end test: open pages, type into forms, read the
rendered text (including same-origin iframes) and save screenshots. Chromium is Debian's
``chromium`` package, started in its own process group and stopped by it.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any


class BrowserError(RuntimeError):
    pass


def chromium_path() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise BrowserError("Chromium not found: apt-get install chromium")


class Browser:
    """One headless Chromium with one tab."""

    def __init__(self, width: int = 1440, height: int = 900) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="e2e-chromium-"))
        self.process = subprocess.Popen(
            [
                chromium_path(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._ids = itertools.count(1)
        try:
            port = self._devtools_port()
            self.ws = self._connect_page(port)
            self.send("Page.enable")
            self.send("Runtime.enable")
            self.send(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
        except BaseException:
            self.close()
            raise

    def _devtools_port(self, timeout_s: float = 60) -> int:
        deadline = time.monotonic() + timeout_s
        active = self.profile / "DevToolsActivePort"
        while time.monotonic() < deadline:
            if active.exists():
                first = active.read_text().splitlines()[:1]
                if first and first[0].isdigit():
                    return int(first[0])
            if self.process.poll() is not None:
                raise BrowserError(f"Chromium exited: {self.process.stderr.read()[-2000:]}")  # type: ignore[union-attr]
            time.sleep(0.2)
        raise BrowserError("Chromium did not open its DevTools port")

    def _connect_page(self, port: int) -> Any:
        from websockets.sync.client import connect

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.loads(resp.read())
        page = next(t for t in targets if t.get("type") == "page")
        return connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=20)

    def send(self, method: str, timeout_s: float = 60, **params: Any) -> dict[str, Any]:
        """Send a CDP command and return its result (events are skipped)."""
        msg_id = next(self._ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrowserError(f"no answer to {method} within {timeout_s}s")
            message = json.loads(self.ws.recv(timeout=remaining))
            if message.get("id") == msg_id:
                if "error" in message:
                    raise BrowserError(f"{method}: {message['error']}")
                return message.get("result", {})

    def goto(self, url: str, settle_s: float = 2.0) -> None:
        self.send("Page.navigate", url=url)
        self.wait_for_js("document.readyState === 'complete'", timeout_s=60)
        time.sleep(settle_s)

    def js(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"JS error in {expression[:80]!r}: {result['exceptionDetails']}")
        return result.get("result", {}).get("value")

    def wait_for_js(self, expression: str, timeout_s: float = 60, poll_s: float = 0.5) -> Any:
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            try:
                last = self.js(expression)
            except BrowserError:
                last = None
            if last:
                return last
            time.sleep(poll_s)
        raise BrowserError(
            f"timed out waiting for {expression[:120]!r} (last value {last!r}); "
            f"page {self.url()} shows: {self.text()[:600]!r}"
        )

    def wait_for_text(self, pattern: str, timeout_s: float = 60, frames: bool = False) -> str:
        """Wait until the page's visible text (and same-origin iframes') matches ``pattern``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            text = self.text(frames=frames)
            if re.search(pattern, text):
                return text
            time.sleep(0.5)
        raise BrowserError(
            f"{pattern!r} not shown at {self.url()} after {timeout_s}s; text: "
            f"{self.text(frames=frames)[:800]!r}"
        )

    def text(self, frames: bool = False) -> str:
        expression = "document.body ? document.body.innerText : ''"
        if frames:
            expression = (
                "(document.body ? document.body.innerText : '') + '\\n' + "
                "Array.from(document.querySelectorAll('iframe')).map(f => { try { "
                "return f.contentDocument.body.innerText } catch (e) { return '' } }).join('\\n')"
            )
        try:
            return self.js(expression) or ""
        except BrowserError:
            return ""

    def url(self) -> str:
        try:
            return self.js("location.href") or ""
        except BrowserError:
            return ""

    def type_into(self, selector: str, value: str) -> None:
        """Type like a user would: focus the field, then insert the text (React sees it)."""
        found = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            f"if (!e) return false; e.focus(); e.select && e.select(); return true; }})()"
        )
        if not found:
            raise BrowserError(f"no element {selector!r} at {self.url()}")
        self.send("Input.insertText", text=value)

    def press_enter(self) -> None:
        keys = {
            "key": "Enter",
            "code": "Enter",
            "windowsVirtualKeyCode": 13,
            "nativeVirtualKeyCode": 13,
        }
        self.send("Input.dispatchKeyEvent", type="keyDown", text="\r", **keys)
        self.send("Input.dispatchKeyEvent", type="keyUp", **keys)

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            params["captureBeyondViewport"] = True
        data = self.send("Page.captureScreenshot", **params)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def screenshot_element(self, selector: str, path: Path, margin: int = 8) -> Path:
        """A screenshot of the element ``selector`` only (scrolled into view first)."""
        box = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); if (!e) "
            "return null; e.scrollIntoView(); const r = e.getBoundingClientRect(); return "
            "{x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height}; })()"
        )
        if not box:
            raise BrowserError(f"no element {selector!r} at {self.url()}")
        clip = {
            "x": max(box["x"] - margin, 0),
            "y": max(box["y"] - margin, 0),
            "width": box["w"] + 2 * margin,
            "height": box["h"] + 2 * margin,
            "scale": 1,
        }
        data = self.send(
            "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True
        )["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def set_cookie(self, url: str, name: str, value: str) -> None:
        """Set a cookie for ``url``'s host (e.g. Airflow's ``_token`` login cookie)."""
        if not self.send("Network.setCookie", url=url, name=name, value=value).get("success"):
            raise BrowserError(f"cookie {name!r} not set for {url}")

    def close(self) -> None:
        try:
            if getattr(self, "ws", None) is not None:
                self.ws.close()
        finally:
            if self.process.poll() is None:
                try:
                    os.killpg(self.process.pid, signal.SIGTERM)
                    self.process.wait(timeout=15)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.process.pid, signal.SIGKILL)
            shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
