"""Keeping credentials out of everything a run writes or prints.

A server can echo what it was sent: a 401 page quoting the ``Authorization`` header, a reply that
repeats the key, a status line made of it. :func:`redact` replaces the key itself (as sent and
URL-quoted) and the value of anything that looks like a credential header (``Authorization``,
``api-key``, ``x-api-key``, ``Bearer ...``) with ``[redacted]``, whatever the key is.
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
_BEARER = re.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=\-]{4,}")


def redact(text: Optional[str], secrets: Iterable[Optional[str]] = ()) -> Optional[str]:
    """``text`` with every secret and every credential-looking header value replaced by ``[redacted]``."""
    if text is None:
        return None
    if not isinstance(text, str):
        text = str(text)
    for s in secrets:
        if not s:
            continue
        for form in {s, urllib.parse.quote(s, safe=""), urllib.parse.quote_plus(s)}:
            text = text.replace(form, REDACTED)
    text = _HEADER_VALUE.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    text = _BEARER.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return text
