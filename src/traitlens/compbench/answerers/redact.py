"""Keeping credentials out of everything a run writes or prints.

A server can echo what it was sent: a 401 page quoting the ``Authorization`` header, a reply that
repeats the key, a status line made of it. :func:`redact` replaces the key itself (as sent and
URL-quoted) and the value of anything that looks like a credential header (``Authorization``,
``api-key``, ``x-api-key``, ``Bearer ...``) with ``[redacted]``, whatever the key is.

The header patterns are for logs, errors and request echoes. A model's reply gets only the secrets
themselves taken out (``patterns=False``): it is kept as the model wrote it, so "the basic shape"
stays a shape.
"""

from __future__ import annotations

import re
import urllib.parse
from typing import Iterable, Optional

REDACTED = "[redacted]"

# "Authorization: Bearer X", '"api-key": "X"', "x-api-key=X", ... : the value after the name
_HEADER_VALUE = re.compile(
    r"(?i)((?:proxy-)?authorization|x-api-key|api[-_ ]?key|access[-_]token)(\s*[\"']?\s*[:=]\s*[\"']?\s*)"
    r"(?:(?:bearer|basic|token)\s+)?[^\s\"',;}&]+")
# "Bearer <token>", "Basic <base64>" (RFC 6750's b64token); which tokens are credentials, _credential says
_SCHEME_TOKEN = re.compile(r"(?i)\b(bearer|basic)(\s+)([A-Za-z0-9._~+/\-]+=*)")


def _credential(token: str) -> bool:
    """Whether the word after "Bearer"/"Basic" is a token rather than English ("shape", "Shapes", "HTTP"):
    a token holds a digit or a symbol, or a capital after its first letter next to a small one (base64)."""
    return len(token) >= 4 and (any(c.isdigit() or c in "._~+/=-" for c in token)
                                or (any(c.isupper() for c in token[1:]) and any(c.islower() for c in token)))


def _scheme_token(m: "re.Match[str]") -> str:
    token = m.group(3).rstrip(".-")  # a full stop or dash after the word ends a sentence, not a token
    if not _credential(token):
        return m.group(0)
    return f"{m.group(1)}{m.group(2)}{REDACTED}{m.group(3)[len(token):]}"


def redact(text: Optional[str], secrets: Iterable[Optional[str]] = (), patterns: bool = True) -> Optional[str]:
    """``text`` with every secret replaced by ``[redacted]``, and (``patterns``) every credential-looking
    header value too; a model's reply is redacted with ``patterns=False``."""
    if text is None:
        return None
    if not isinstance(text, str):
        text = str(text)
    for s in secrets:
        if not s:
            continue
        for form in {s, urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s)}:
            text = text.replace(form, REDACTED)
    if not patterns:
        return text
    text = _HEADER_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _SCHEME_TOKEN.sub(_scheme_token, text)
