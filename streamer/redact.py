"""Credentials out of URLs and text: what may be shown, logged or stored in place of a source URL.

Cameras carry their secrets in two places: the user info (``rtsp://admin:pw@cam/...``) and query
parameters (``?token=...``, ``&api_key=...``). ``redact_url`` keeps everything an operator needs to
recognise a source (scheme, host, port, path, the harmless parameters) and replaces the secrets:
the user info by ``***@`` (so one still sees that credentials are set), a secret-looking
parameter's value by ``***``. ``redact_text`` does that to every URL inside arbitrary text (an
FFmpeg error, an exception message, a log line), and to ``user:password@host`` and ``?token=...``
without a scheme.

User info is taken to end at the last ``@`` before the query (FFmpeg ends it at the first ``/``,
``?`` or ``#``): a password with an unescaped ``/`` or ``#`` in it is hidden too, at the price of
hiding a path that contains ``@``. Over-redacting is the safe side throughout: a parameter whose
name merely contains a secret word (``keyframe`` contains ``key``) loses its value.

Pure functions; no I/O.
"""
from __future__ import annotations

import re
from urllib.parse import unquote_plus

__all__ = ["MASK", "SECRET_WORDS", "is_secret_name", "redact_url", "redact_source", "redact_text"]

MASK = "***"
# A query parameter whose name contains one of these (case-insensitive) has its value masked.
SECRET_WORDS = ("token", "password", "passwd", "pass", "pwd", "key", "apikey", "api_key", "secret", "auth",
                "signature", "sig", "access_token", "credential", "session")

_SCHEME_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://(.*)$", re.S)
# A URL inside text: a scheme, "://", then anything up to whitespace, a quote or angle bracket.
_URL_IN_TEXT = re.compile(r"(?<![A-Za-z0-9+.\-])([A-Za-z][A-Za-z0-9+.\-]*)://[^\s'\"<>`]*")
_TRAILING = ".,;:!?)]}'\""  # punctuation that ends a sentence rather than the URL
# user:password@ without a scheme: no whitespace, quote, "/" or "@" in either part ("***@" has no ":")
_USERINFO_IN_TEXT = re.compile(r"[^\s/@:'\"<>()\[\]]+:[^\s/@'\"<>]*@")
# a query parameter without its URL's scheme ("cam/x?token=..." pasted as a path): after "?", "&" or ";"
_PARAM_IN_TEXT = re.compile(r"([?&;])([^\s=&;?#'\"<>]+)=([^\s&;#'\"<>]+)")


def is_secret_name(name: str) -> bool:
    """True when a parameter named `name` (percent/plus-decoded, any case) may hold a credential."""
    n = unquote_plus(name).lower()
    return any(w in n for w in SECRET_WORDS)


def _redact_params(text: str) -> str:
    """a=1&token=x;b -> a=1&token=***;b: the order, separators and encoding of the rest kept as they are."""
    parts = re.split(r"([&;])", text)
    for i in range(0, len(parts), 2):
        name, eq, value = parts[i].partition("=")
        if eq and value and is_secret_name(name):
            parts[i] = f"{name}={MASK}"
    return "".join(parts)


def redact_url(url: str) -> str:
    """`url` with its user info replaced by ``***@`` and its secret-looking parameters' values by ``***``.

    A URL without secrets comes back unchanged, character for character. Text that is not a
    ``scheme://`` URL gets `redact_text` (so a ``user:pass@host`` in it is still masked).
    """
    if not isinstance(url, str):
        return url
    m = _SCHEME_URL.match(url)
    if m is None:
        return redact_text(url)
    scheme, rest = m.group(1), m.group(2)
    at = _userinfo_end(rest)
    rest = rest[at + 1:]  # the user info is dropped whole (at == -1: none, rest stays)
    rest, hash_, fragment = rest.partition("#")
    hostpath, q, query = rest.partition("?")
    out = f"{scheme}://{MASK + '@' if at >= 0 else ''}{hostpath}"
    if q:
        out += "?" + _redact_params(query)
    if hash_:
        out += "#" + (_redact_params(fragment) if "=" in fragment else fragment)
    return out


def redact_source(source: str) -> str:
    """A stream's source as shown: a ``scheme://`` URL redacted, anything else (a file path, "push:<name>", whose
    "@" is no credential) as it is."""
    return redact_url(source) if isinstance(source, str) and _SCHEME_URL.match(source) else source


def _userinfo_end(rest: str) -> int:
    """Where the user info of `rest` (a URL after its "scheme://") ends: the index of its "@", or -1.

    The last "@" before the query; failing that, one in the query's first name (a "?" in an
    unescaped password: "admin:pa?ss@cam/x"). A "/" or "#" before the "@" does not end it.
    """
    qpos = rest.find("?")
    head = rest if qpos < 0 else rest[:qpos]
    at = head.rfind("@")
    if at < 0 and qpos >= 0:
        first = re.match(r"[^&;=]*", rest[qpos + 1:]).group(0)
        if "@" in first:
            at = qpos + 1 + first.rfind("@")
    return at


def _redact_match(m: re.Match) -> str:
    url = m.group(0)
    stripped = url.rstrip(_TRAILING)
    return redact_url(stripped) + url[len(stripped):]


def redact_text(text: str) -> str:
    """Every ``scheme://`` URL in `text` through `redact_url`; then every ``user:pass@`` left over masked, and
    the value of every secret-looking ``?name=value`` / ``&name=value`` (a URL pasted without its scheme)."""
    if not isinstance(text, str) or not text:
        return text
    if "://" in text:
        text = _URL_IN_TEXT.sub(_redact_match, text)
    if "@" in text:
        text = _USERINFO_IN_TEXT.sub(f"{MASK}@", text)
    if "=" in text:
        text = _PARAM_IN_TEXT.sub(_redact_param_match, text)
    return text


def _redact_param_match(m: re.Match) -> str:
    if not is_secret_name(m.group(2)):
        return m.group(0)
    value = m.group(3)
    return f"{m.group(1)}{m.group(2)}={MASK}{value[len(value.rstrip(_TRAILING)):]}"  # "... token=x)." keeps ")."
