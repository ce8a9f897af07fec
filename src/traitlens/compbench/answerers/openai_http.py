"""An OpenAI-compatible chat-completions client (OpenAI, vLLM, Ollama, LM Studio, ...).

Images travel as base64 ``data:`` URLs; decoding is greedy (temperature 0) with at most 128 new
tokens. 429s, 5xx, timeouts, dropped connections and malformed JSON are retried with exponential
backoff (honouring ``Retry-After``); other 4xx errors fail at once. The API key is read from an
environment variable when a request is made and only ever goes into the ``Authorization`` header: it
is never stored on the object, in results, or in error messages.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, List, Optional

from traitlens.compbench.answerers.base import AnswererError, Query
from traitlens.errors import UserError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_MIME = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp",
         ".gif": "image/gif"}


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: Optional[float] = None):
        super().__init__(reason)
        self.retry_after = retry_after


def image_data_url(path: Path) -> str:
    """A ``data:`` URL for an image file; formats servers may not read are re-encoded as PNG."""
    path = Path(path)
    mime = _MIME.get(path.suffix.lower())
    if mime is not None:
        data = path.read_bytes()
    else:
        from traitlens.data.imageio import load_image

        buf = io.BytesIO()
        load_image(path).save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _pil_data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAIChatAnswerer:
    """Ask a model served behind an OpenAI-compatible ``/chat/completions`` endpoint.

    ``merged=True`` sends each pair as one merged image (for single-image models).
    """

    def __init__(self, model: str, base_url: Optional[str] = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 4, timeout: float = 60.0, max_retries: int = 5, backoff: float = 1.0,
                 max_backoff: float = 30.0, max_tokens: int = 128, temperature: float = 0.0, merged: bool = False):
        if not model:
            raise UserError("no model name given: use openai:NAME (e.g. openai:gpt-4o)", option="model")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        if not self.base_url.startswith(("http://", "https://")):
            raise UserError(f"base URL {self.base_url!r} is not an http(s) URL (e.g. http://127.0.0.1:8000/v1)",
                            option="base_url")
        self.api_key_env = api_key_env
        if self.base_url == DEFAULT_BASE_URL and not os.environ.get(api_key_env):
            raise UserError(f"the OpenAI API needs a key: set the environment variable {api_key_env}")
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.merged = merged
        self.name = f"openai:{model}"
        self.retries = 0  # total retries made, for the run's log

    def __repr__(self) -> str:  # no key here, ever
        return f"OpenAIChatAnswerer(model={self.model!r}, base_url={self.base_url!r})"

    def payload(self, query: Query) -> Dict[str, Any]:
        """The request body for one query."""
        if self.merged and len(query.images) == 2:
            urls = [_pil_data_url(im) for im in query.load_images(merged=True)]
        else:
            urls = [image_data_url(p) for p in query.images]
        content: List[Dict[str, Any]] = [{"type": "text", "text": query.prompt}]
        content += [{"type": "image_url", "image_url": {"url": u}} for u in urls]
        return {"model": self.model, "messages": [{"role": "user", "content": content}],
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    def answer(self, query: Query) -> str:
        body = json.dumps(self.payload(query)).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(body)
            except _Retryable as exc:
                last = str(exc)
                if attempt == self.max_retries:
                    break
                self.retries += 1
                delay = min(self.max_backoff, self.backoff * (2 ** attempt))
                if exc.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, exc.retry_after))
                time.sleep(delay)
        raise AnswererError(f"{self.base_url}: no answer after {self.max_retries + 1} tries ({last})")

    def _post(self, body: bytes) -> str:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 429 or exc.code >= 500:
                ra = exc.headers.get("Retry-After") if exc.headers else None
                try:
                    retry_after = float(ra) if ra is not None else None
                except ValueError:
                    retry_after = None
                raise _Retryable(f"HTTP {exc.code}", retry_after) from None
            detail = exc.read()[:300].decode("utf-8", "replace")
            raise AnswererError(f"{self.base_url}: HTTP {exc.code}: {detail}") from None
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
            raise _Retryable(f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}") from None
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable("malformed JSON response") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            raise _Retryable("response without text content")
        return content
