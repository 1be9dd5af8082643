"""Credentials written into URLs, kept inside the process.

`output.mirror` may carry them (`s3://KEY:SECRET@bucket/run`, a signed URL's `?X-Amz-Signature=...`). fsspec
needs the real URL; everything that leaves the process (printed lines, error messages, saved config.yaml files,
tracker hyper-parameters, the report page, what `push` uploads) shows it with the userinfo and the values of
secret-carrying query parameters replaced by `***`.
"""

from __future__ import annotations

import re
from typing import Any

HIDDEN = "***"

# scheme://rest, ending where prose or markup would: whitespace, quotes, brackets.
_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>()\[\]{}`]+")
# Query parameter names whose values are credentials: tokens, keys, passwords, signatures (AWS and Google signed
# URLs, Azure SAS `sig`), matched in any case, alone or as a part of a longer name (`client_secret`, `api-key`).
_SECRET_PARAM = re.compile(
    r"token|secret|passw|signature|credential|apikey|accesskey|^x-(amz|goog)-|(^|[-_.])(key|sig|pwd|auth)($|[-_.])",
    re.IGNORECASE,
)


def redact_url(text: str) -> str:
    """`text` with the credentials of every URL in it replaced by `***`: the userinfo (`s3://***@bucket/run`) and
    the values of query parameters that carry secrets (`?token=***`). Text that is not a URL is left as it is."""
    return _URL.sub(lambda match: _redacted(match.group()), text)


def url_secrets(text: str) -> list[str]:
    """The credentials that the URLs in `text` carry, as written: each userinfo and each secret query value."""
    found = []
    for match in _URL.finditer(text):
        _, userinfo, _, query, _ = _parts(match.group())
        found += [userinfo] if userinfo else []
        found += [value for name, value in _params(query) if value and _SECRET_PARAM.search(name)]
    return found


# Credentials shorter than this are not hidden in free text by `scrub`: replacing them would garble ordinary
# words and numbers (an `X-Amz-Expires=60`), and a secret that short protects nothing anyway.
SCRUB_MIN = 4


def scrub(text: str, url: str) -> str:
    """`text` (a backend's error message, say) with the URLs in it redacted and every credential of `url` hidden
    wherever it appears: a filesystem may name its path with the userinfo but without the scheme."""
    text = redact_url(text)
    for secret in sorted(url_secrets(url), key=len, reverse=True):
        if len(secret) >= SCRUB_MIN:
            text = text.replace(secret, HIDDEN)
    return text


def redact_tree(value: Any) -> Any:
    """`value` (a config's `to_dict()`, or any nesting of dicts, lists and scalars) with every string redacted."""
    if isinstance(value, str):
        return redact_url(value)
    if isinstance(value, dict):
        return {key: redact_tree(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_tree(item) for item in value]
    return value


def _redacted(url: str) -> str:
    start, userinfo, rest, query, end = _parts(url)
    if userinfo is not None:
        start += f"{HIDDEN}@"
    if query is not None:
        params = [
            f"{name}={HIDDEN}" if value and _SECRET_PARAM.search(name) else pair
            for pair, (name, value) in zip(query.split("&"), _params(query), strict=True)
        ]
        rest += "?" + "&".join(params)
    return start + rest + end


def _parts(url: str) -> tuple[str, str | None, str, str | None, str]:
    """A URL as (scheme://, userinfo, host and path, query, #fragment): the authority ends at the first `/`, `?`
    or `#` (RFC 3986), so an `@` further on is part of the path."""
    scheme, _, after = url.partition("://")
    url_rest, hash_, fragment = after.partition("#")
    before_query, question, query = url_rest.partition("?")
    authority, slash, path = before_query.partition("/")
    userinfo, at, host = authority.rpartition("@")
    return (
        f"{scheme}://",
        userinfo if at else None,
        host + slash + path,
        query if question else None,
        hash_ + fragment,
    )


def _params(query: str | None) -> list[tuple[str, str]]:
    if query is None:
        return []
    return [(name, value) for name, _, value in (pair.partition("=") for pair in query.split("&"))]
