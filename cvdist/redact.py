"""Credentials out of everything cvdist writes or prints.

Shard URLs and ``pipe:`` commands can carry secrets: ``https://user:password@host/...``,
pre-signed URLs (``?X-Amz-Signature=...``, Azure's ``?sig=...``), ``curl -H 'Authorization:
Bearer ...'``. A run writes its config to ``config.yaml`` and to W&B, and errors name the shard
they met, so every one of those goes through :func:`redact_text` (strings) or :func:`redact`
(nested configs) first. The secret is replaced by ``***``; the rest stays readable.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# The patterns run over error lines that can hold a hostile shard's member names (up to 1 MiB),
# so each is linear in the text: a match may only start where its run of characters starts (the
# look-behinds) and its runs stop at the next delimiter, with possessive quantifiers (no backtracking).
# scheme://userinfo@host -> scheme://***@host (userinfo: anything up to the '@' before the host)
_USERINFO = re.compile(r"(?<![a-zA-Z0-9+.-])(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*+://)[^/@\s\"]++@")
# ?token=... &X-Amz-Signature=... : the value of a query parameter whose name says it is secret
# (one of its '-' / '_' / '.'-separated words is in _SECRET_WORDS; "monkey=1" stays)
_PARAMETER = re.compile(r"(?P<name>[?&;](?P<key>[^=&;?\s'\"#]++)=)(?P<value>[^&;\s'\"#]++)")
_SECRET_WORDS = frozenset({"token", "sig", "signature", "secret", "password", "passwd", "pwd", "key", "apikey",
                           "credential", "credentials", "auth", "authorization", "session", "sas"})
# Authorization: Bearer abc / Basic abc (a header passed to curl in a pipe: command)
_AUTH_HEADER = re.compile(r"(?P<name>(?<![A-Za-z])(?:bearer|basic|token)\s++)[A-Za-z0-9._~+/=-]{8,}+", re.IGNORECASE)


def redact_text(text: str) -> str:
    """``text`` with URL user information, secret query parameters and authorisation headers
    replaced by ``***``."""
    if not isinstance(text, str):
        return text
    text = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    text = _PARAMETER.sub(_masked_parameter, text)
    return _AUTH_HEADER.sub(lambda m: f"{m['name']}{MASK}", text)


def _masked_parameter(match: re.Match) -> str:
    words = re.split(r"[-_.]", match["key"].lower())
    return f"{match['name']}{MASK}" if _SECRET_WORDS.intersection(words) else match[0]


def redact(value: Any) -> Any:
    """A copy of ``value`` (strings, and dicts / lists / tuples of them, nested) with every
    string passed through :func:`redact_text`."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(item) for item in value)
    return value
