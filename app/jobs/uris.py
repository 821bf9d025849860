"""Checks on model / data URIs at submit time.

The parsing rules live in one place, the fetcher's torch-free ``presso.fetch.uri.parse_model_uri``
(the worker re-checks everything, including DNS, when it fetches). This module maps its errors to a
422 naming the request field. Schemes: s3://, https://, hf://, file:// (only under
``PRESSO_ALLOWED_FILE_ROOTS``).
"""

from __future__ import annotations

from presso.app.core.errors import InvalidModelUri
from presso.app.core.settings import Settings


def check_uri(uri: str, settings: Settings, *, field: str = "model_uri") -> str:
    """Return the URI, or raise InvalidModelUri (422) naming ``field``."""
    from presso.fetch.errors import FetchError
    from presso.fetch.uri import parse_model_uri

    try:
        parse_model_uri(
            uri,
            allowed_file_roots=settings.allowed_file_roots,
            allow_http=settings.fetch_allow_http,
            allowed_schemes=settings.allowed_uri_schemes,
            allow_private_hosts=settings.fetch_allow_private_hosts,
        )
    except FetchError as exc:
        raise InvalidModelUri(f"{field}: {exc.message}", field=field) from exc
    return uri
