"""URL normalisation: the join key between documents and image records, and the URL-dedup key."""
from __future__ import annotations

from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

_DEFAULT_PORTS = {"http": "80", "https": "443"}


def normalize_url(url: str) -> str:
    """Canonical form of an absolute URL, so the same resource matches across pages and crawls.

    Lower-cases scheme and host, drops default ports, the fragment and a trailing ``?``, resolves
    percent-encoding to one canonical form and sorts query parameters. ``http`` and ``https`` stay
    distinct: crawls store them as distinct resources.
    """
    url = url.strip()
    try:
        parts = urlsplit(url)
    except ValueError:
        return url
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").rstrip(".")
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets
    if port is not None and str(port) != _DEFAULT_PORTS.get(scheme):
        netloc = f"{netloc}:{port}"
    path = quote(unquote(parts.path or "/"), safe="/:@!$&'()*+,;=-._~%")
    query = urlencode(sorted(parse_qsl(parts.query, keep_blank_values=True)), doseq=True) if parts.query else ""
    return urlunsplit((scheme, netloc, path, query, ""))


def domain(url: str) -> str:
    """Host of a URL without a leading ``www.`` (the unit of per-domain paragraph dedup)."""
    try:
        host = (urlsplit(url).hostname or "").rstrip(".")
    except ValueError:
        return ""
    return host[4:] if host.startswith("www.") else host
