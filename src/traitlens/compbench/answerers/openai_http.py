"""An OpenAI-compatible chat-completions client (OpenAI, vLLM, Ollama, LM Studio, ...).

What is sent, and where: one POST per record to ``BASE_URL/chat/completions`` holding the prompt text
and the pair's images as base64 ``data:`` URLs (after each image was decoded and found valid; its
MIME type is the format found in the file, not its name), the model name, temperature 0 and at most
128 new tokens. The API key, read from an environment variable when a request is made, goes only
into that request's ``Authorization`` header: never onto the object, into results, logs or errors.
``$http_proxy``/``$https_proxy``/``$no_proxy`` are honoured as urllib honours them, except that a
server on this machine is never reached through a proxy; https goes through a ``CONNECT`` tunnel
(the proxy sees neither key nor images), and plain http through a proxy while a key is set is
refused (the proxy would read the key).

A server is not trusted:

* redirects are not followed to another origin (``Authorization`` would go with them), to an address
  that is none (a port out of range or not a number) and never for 301/302/303 (they turn the POST
  into a bodiless GET): the record fails with a line that says where the server pointed; a 307/308
  to the same origin is followed (at most 3 hops);
* ``timeout`` bounds the whole request (connect, send, wait, read): a server trickling one byte a
  second is cut off at the deadline, then retried;
* replies larger than ``max_response_bytes`` are refused without being read whole;
* 429s, 5xx, timeouts, dropped connections, truncated bodies, garbage status lines and malformed
  JSON are retried with exponential backoff (honouring ``Retry-After``), then the record fails
  like a 500 does; other 4xx errors fail at once;
* everything the server sends back that ends up in a message or a reply passes through
  :func:`~traitlens.compbench.answerers.redact.redact`, so a server echoing the key cannot get it
  written anywhere (a reply loses the key and nothing else; messages also lose anything shaped like
  a credential header).
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import socket
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from traitlens.compbench.answerers.base import AnswererError, Query
from traitlens.compbench.answerers.redact import redact
from traitlens.errors import UserError

DEFAULT_BASE_URL = "https://api.openai.com/v1"
#: Image formats sent as they are (others are re-encoded as PNG); keys are PIL format names.
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
MAX_RESPONSE_BYTES = 4 * 2 ** 20  # a chat reply of 128 tokens is a few kB; 4 MiB leaves room for extras
MAX_REDIRECTS = 3


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: Optional[float] = None):
        super().__init__(reason)
        self.retry_after = retry_after


def image_data_url(path: Path) -> str:
    """A ``data:`` URL for an image file, checked first (a file that does not decode raises
    :class:`~traitlens.errors.BadImageError`); formats servers may not read are re-encoded as PNG."""
    from traitlens.compbench.records import check_image
    from traitlens.data.imageio import load_image

    path = Path(path)
    mime = _MIME.get(check_image(path))
    if mime is not None:
        data = path.read_bytes()
    else:
        buf = io.BytesIO()
        load_image(path).save(buf, format="PNG")
        data, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _pil_data_url(image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _split(url: str, base: Optional[str] = None) -> Tuple[Optional[urllib.parse.SplitResult], Optional[str]]:
    """``url`` (joined to ``base`` when given) split, or ``(None, why)`` when no request can go there:
    a port that is not a number from 1 to 65535, an unclosed ``[`` around an IPv6 host. urllib raises
    ValueError for these only when the port is read, so a server's ``Location`` is checked here first."""
    try:
        u = urllib.parse.urlsplit(urllib.parse.urljoin(base, url) if base else url)
        port = u.port
    except ValueError as exc:
        return None, str(exc)
    if port == 0:
        return None, "port 0"
    return u, None


def _origin(url: urllib.parse.SplitResult) -> Tuple[str, str, int]:
    """(scheme, host, port) of a URL that :func:`_split` accepted."""
    port = url.port or (443 if url.scheme == "https" else 80)
    return url.scheme, (url.hostname or "").lower(), port


def _shown(url: str) -> str:
    """A URL fit to print: no user:password part, no query (either may hold a credential)."""
    try:
        u = urllib.parse.urlsplit(url)
    except ValueError:  # an unclosed "[": cut by hand, dropping as much as urlsplit would and more
        scheme, sep, rest = url.partition("://")
        return scheme + sep + rest.split("?")[0].split("#")[0].rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((u.scheme, u.netloc.rsplit("@", 1)[-1], u.path, "", ""))


def _on_this_machine(host: str) -> bool:
    """``localhost``, 127.0.0.0/8, ``::1`` (or 0.0.0.0 / ``::``, which reach this machine too)."""
    import ipaddress

    host = host.lower().rstrip(".")
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    ip = getattr(ip, "ipv4_mapped", None) or ip
    return ip.is_loopback or ip.is_unspecified


def _proxy_for(url: urllib.parse.SplitResult) -> Optional[urllib.parse.SplitResult]:
    """The proxy the environment names for ``url`` (``$https_proxy``, ``$http_proxy``, ``$no_proxy``), or None.

    A server on this machine (a local vLLM or llama.cpp) is never reached through a proxy, whatever
    ``$no_proxy`` says: the proxy would get the key and the images, and could not reach it anyway."""
    import urllib.request

    host = url.hostname or ""
    proxy = urllib.request.getproxies().get(url.scheme)
    if not proxy or _on_this_machine(host) or urllib.request.proxy_bypass(host):
        return None
    p = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    return p if p.hostname else None


def _cleartext_problem(url: urllib.parse.SplitResult, key: Optional[str]) -> Optional[str]:
    """Why ``url`` may not be asked with ``key`` (a plain-http request through a proxy would hand the
    proxy the key in clear), or None. Through https the proxy only tunnels, and sees no key."""
    proxy = _proxy_for(url) if url.scheme == "http" and key else None
    if proxy is None:
        return None
    return (f"the API key would go in cleartext to the proxy {proxy.hostname}:{proxy.port or 8080} ($http_proxy) "
            f"on its way to {_shown(urllib.parse.urlunsplit(url))}: use https, or set no_proxy={url.hostname}")


class OpenAIChatAnswerer:
    """Ask a model served behind an OpenAI-compatible ``/chat/completions`` endpoint.

    ``merged=True`` sends each pair as one merged image (for single-image models).
    """

    def __init__(self, model: str, base_url: Optional[str] = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 4, timeout: float = 60.0, max_retries: int = 5, backoff: float = 1.0,
                 max_backoff: float = 30.0, max_tokens: int = 128, temperature: float = 0.0, merged: bool = False,
                 max_response_bytes: int = MAX_RESPONSE_BYTES):
        if not model:
            raise UserError("no model name given: use openai:NAME (e.g. openai:gpt-4o)", option="model")
        self.model = model
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        split, bad = _split(self.base_url)
        if bad is not None:
            raise UserError(f"base URL {_shown(self.base_url)!r} cannot be reached ({bad}); give a host and a port "
                            f"from 1 to 65535 (e.g. http://127.0.0.1:8000/v1)", option="base_url")
        if not self.base_url.startswith(("http://", "https://")) or not split.hostname:
            raise UserError(f"base URL {_shown(self.base_url)!r} is not an http(s) URL "
                            f"(e.g. http://127.0.0.1:8000/v1)", option="base_url")
        self.api_key_env = api_key_env
        if self.base_url == DEFAULT_BASE_URL and not os.environ.get(api_key_env):
            raise UserError(f"the OpenAI API needs a key: set the environment variable {api_key_env}")
        cleartext = _cleartext_problem(split, self._key())
        if cleartext is not None:
            raise UserError(cleartext, option="base_url")
        for label, value, low in (("timeout", timeout, 0.0), ("backoff", backoff, 0.0),
                                  ("max_backoff", max_backoff, 0.0)):
            if not (float(value) == float(value) and low <= float(value) < float("inf")):
                raise UserError(f"{label} {value}: must be a finite number of seconds ≥ {low}", option=label)
        if float(timeout) <= 0:
            raise UserError(f"timeout {timeout}: must be more than 0 seconds", option="timeout")
        if int(max_retries) < 0:
            raise UserError(f"retries {max_retries}: must be 0 or more", option="retries")
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.max_response_bytes = int(max_response_bytes)
        self.merged = merged
        self.name = f"openai:{model}"
        self.shown_url = _shown(self.base_url)
        self.retries = 0  # total retries made, for the run's log

    def __repr__(self) -> str:  # no key here, ever
        return f"OpenAIChatAnswerer(model={self.model!r}, base_url={self.shown_url!r})"

    def _key(self) -> Optional[str]:
        return os.environ.get(self.api_key_env) or None

    def _secrets(self) -> Tuple[Optional[str], ...]:
        u = urllib.parse.urlsplit(self.base_url)
        return self._key(), u.password, u.query or None

    def redact(self, text: Optional[str]) -> Optional[str]:
        """``text`` with the key (and anything that looks like a credential) replaced by ``[redacted]``;
        the runner passes every message and log line it writes through this."""
        return redact(text, self._secrets())

    def redact_reply(self, text: Optional[str]) -> Optional[str]:
        """A model's reply with the key (and the base URL's password and query) taken out, and nothing
        else changed: the runner stores replies through this."""
        return redact(text, self._secrets(), patterns=False)

    def payload(self, query: Query) -> Dict[str, Any]:
        """The request body for one query (images are checked: a bad one raises BadImageError)."""
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
                return self.redact_reply(self._post(body))
            except _Retryable as exc:
                last = str(exc)
                if attempt == self.max_retries:
                    break
                self.retries += 1
                delay = min(self.max_backoff, self.backoff * (2 ** attempt))
                if exc.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, exc.retry_after))
                time.sleep(delay)
            except AnswererError as exc:
                raise AnswererError(self.redact(str(exc))) from None
        raise AnswererError(self.redact(f"{self.shown_url}: no answer after {self.max_retries + 1} tries ({last})"))

    # ------------------------------------------------------------------------------ one request
    def _post(self, body: bytes) -> str:
        """One POST (following same-origin 307/308), its reply text; raises _Retryable or AnswererError."""
        url = urllib.parse.urlsplit(f"{self.base_url}/chat/completions")
        first = _origin(url)
        deadline = time.monotonic() + self.timeout
        for _ in range(MAX_REDIRECTS + 1):
            status, headers, raw = self._exchange(url, body, deadline)
            if 300 <= status < 400:
                location = headers.get("location") or ""
                target, bad = _split(location, base=urllib.parse.urlunsplit(url))
                if target is None:
                    raise AnswererError(f"{self.shown_url}: HTTP {status} redirect to {_shown(location[:200])!r} "
                                        f"not followed (not an address: {bad}); give the server's final address "
                                        f"as the base URL")
                where = _shown(urllib.parse.urlunsplit(target)) if target.hostname else repr(location[:80])
                if status in (307, 308) and target.hostname and _origin(target) == first:
                    url = target
                    continue
                why = ("another origin: the key is never sent there" if target.hostname and _origin(target) != first
                       else "a redirect that would turn the POST into a GET")
                raise AnswererError(f"{self.shown_url}: HTTP {status} redirect to {where} not followed ({why}); "
                                    f"give the server's final address as the base URL")
            return self._reply_text(status, headers, raw)
        raise AnswererError(f"{self.shown_url}: more than {MAX_REDIRECTS} redirects")

    def _reply_text(self, status: int, headers, raw: bytes) -> str:
        if status == 429 or status >= 500:
            ra = headers.get("retry-after")
            try:
                retry_after = float(ra) if ra is not None else None
            except ValueError:
                retry_after = None
            if retry_after is not None and not (0 <= retry_after < float("inf")):
                retry_after = None
            raise _Retryable(f"HTTP {status}", retry_after)
        if status >= 400 or status < 200:
            detail = " ".join(raw[:300].decode("utf-8", "replace").split())
            raise AnswererError(f"{self.shown_url}: HTTP {status}: {detail}")
        try:
            data = json.loads(raw)
            content = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Retryable("malformed JSON response") from None
        if isinstance(content, list):  # some servers return content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict)
                              and isinstance(p.get("text", ""), str))
        if not isinstance(content, str):
            raise _Retryable("response without text content")
        return content

    def _exchange(self, url: urllib.parse.SplitResult, body: bytes, deadline: float):
        """Send ``body`` to ``url`` and read the reply by ``deadline``: (status, headers, body bytes).

        A watchdog shuts the socket down at the deadline, so a server trickling bytes (each one
        inside a per-read timeout) cannot hold the request past it.
        """
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Retryable(f"no complete reply within {self.timeout:g} s")
        path = url.path + (f"?{url.query}" if url.query else "")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = self._key()
        cleartext = _cleartext_problem(url, key)
        if cleartext is not None:  # the key was set after this answerer was made
            raise AnswererError(cleartext)
        proxy = _proxy_for(url)
        if proxy is None:
            cls = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
            conn = cls(url.hostname, url.port, timeout=remaining)
        else:  # $https_proxy / $http_proxy, as urllib honours them
            proxy_headers = {}
            if proxy.username:
                creds = f"{urllib.parse.unquote(proxy.username)}:{urllib.parse.unquote(proxy.password or '')}"
                proxy_headers["Proxy-Authorization"] = "Basic " + base64.b64encode(creds.encode()).decode()
            if url.scheme == "https":  # a CONNECT tunnel: the proxy sees neither the key nor the body
                conn = http.client.HTTPSConnection(proxy.hostname, proxy.port or 8080, timeout=remaining)
                conn.set_tunnel(url.hostname, url.port or 443, headers=proxy_headers)
            else:
                conn = http.client.HTTPConnection(proxy.hostname, proxy.port or 8080, timeout=remaining)
                path = urllib.parse.urlunsplit((url.scheme, url.netloc.rsplit("@", 1)[-1], url.path, url.query, ""))
                headers.update(proxy_headers)
        fired = threading.Event()

        def cut():
            fired.set()
            sock = conn.sock
            if sock is not None:
                try:  # the plain socket's shutdown: wakes a blocked read, also under TLS
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(remaining, cut)
        watchdog.daemon = True
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            watchdog.start()
            conn.connect()
            if fired.is_set():
                raise socket.timeout()
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            resp_headers = {k.lower(): v for k, v in resp.getheaders()}
            raw = self._read_capped(resp, resp_headers)
            if fired.is_set():
                raise socket.timeout()
            return resp.status, resp_headers, raw
        except (socket.timeout, TimeoutError):
            raise _Retryable(f"no complete reply within {self.timeout:g} s") from None
        except (http.client.HTTPException, OSError) as exc:
            if fired.is_set():
                raise _Retryable(f"no complete reply within {self.timeout:g} s") from None
            # IncompleteRead (a body cut short), BadStatusLine (garbage), dropped connections, refused
            reason = type(exc).__name__
            if isinstance(exc, http.client.IncompleteRead):
                reason += f" ({len(exc.partial)} bytes)"
            elif not isinstance(exc, http.client.HTTPException):
                reason += f": {getattr(exc, 'strerror', None) or exc}"
            raise _Retryable(reason[:200]) from None
        finally:
            watchdog.cancel()
            conn.close()

    def _read_capped(self, resp, headers) -> bytes:
        cap = self.max_response_bytes
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > cap:
            raise AnswererError(f"{self.shown_url}: reply of {int(length)} bytes refused (more than {cap} bytes)")
        chunks, size = [], 0
        while True:
            chunk = resp.read(min(65536, cap + 1 - size))
            if not chunk:
                body = b"".join(chunks)
                if length is not None and length.strip().isdigit() and len(body) < int(length):
                    # http.client returns a short body read in pieces without complaint: it is cut short
                    raise http.client.IncompleteRead(body, int(length) - len(body))
                return body
            chunks.append(chunk)
            size += len(chunk)
            if size > cap:
                raise AnswererError(f"{self.shown_url}: reply larger than {cap} bytes refused")
