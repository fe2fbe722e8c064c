"""A DICOMweb client for one archive: credentials from the environment or netrc, TLS on, retries.

Built on :class:`dicomweb_client.DICOMwebClient` (QIDO-RS, WADO-RS, STOW-RS); nothing here
speaks HTTP by hand. What this module adds is policy:

Credentials
    Never from command-line arguments (they show in ``ps`` and shell history) and never
    logged. In this order: ``CXR_CAD_DICOMWEB_TOKEN`` (an OAuth bearer token), then
    ``CXR_CAD_DICOMWEB_USER`` + ``CXR_CAD_DICOMWEB_PASSWORD`` (HTTP basic), then the
    ``~/.netrc`` entry of the archive's host (file named by ``NETRC``), which ``requests``
    reads itself when no other credentials are set.
TLS
    Certificates are verified (``requests``' default). ``CXR_CAD_DICOMWEB_CA_BUNDLE`` names a
    CA bundle for a hospital's own certificate authority; there is no switch to turn
    verification off.
Retries
    Connection failures, read time-outs and HTTP 429/500/502/503/504 are retried with
    exponential back-off by urllib3's :class:`~urllib3.util.retry.Retry` on the session
    (``CXR_CAD_DICOMWEB_RETRIES``, default 4 retries: 0.5, 1, 2, 4 s). What still fails is
    the caller's to account for (see :func:`network_reason`).
Wildcards
    dicomweb-client percent-encodes every query value (``NB*`` -> ``NB%2A``), and some archives
    (Orthanc 1.10 among them) then match the literal characters. The session's adapter sends the
    QIDO-RS matching wildcards ``*`` and ``?`` as they are (both are legal in a URL query,
    RFC 3986 3.4), so ``--query PatientID=NB*`` is a wildcard match (PS3.18 8.3.4.1).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import requests
from dicomweb_client import DICOMwebClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from cxr_cad.errors import ConfigError, Reason

if TYPE_CHECKING:
    from dicomweb_client import DICOMwebClient

log = logging.getLogger(__name__)

PREFIX = "dicomweb:"
TOKEN_ENV = "CXR_CAD_DICOMWEB_TOKEN"
USER_ENV = "CXR_CAD_DICOMWEB_USER"
PASSWORD_ENV = "CXR_CAD_DICOMWEB_PASSWORD"
CA_BUNDLE_ENV = "CXR_CAD_DICOMWEB_CA_BUNDLE"
RETRIES_ENV = "CXR_CAD_DICOMWEB_RETRIES"
TIMEOUT_S = 60

#: Reason codes for instances that could not be fetched (rejected.csv ``reason``).
NETWORK_ERROR = Reason.NETWORK_ERROR.value
FETCH_FAILED = Reason.FETCH_FAILED.value
NOT_FOUND_IN_ARCHIVE = Reason.NOT_FOUND_IN_ARCHIVE.value
#: The reasons of an image a later run fetches again.
NETWORK_REASONS = (NETWORK_ERROR, FETCH_FAILED, NOT_FOUND_IN_ARCHIVE)


def is_dicomweb(source: str | os.PathLike) -> bool:
    """True for a source written ``dicomweb:http(s)://host/prefix``."""
    return str(source).startswith(PREFIX)


def parse_url(source: str) -> str:
    """``dicomweb:https://pacs/dicom-web`` -> ``https://pacs/dicom-web`` (ConfigError if malformed).

    Credentials inside the URL (``https://user:pw@host``) are refused: they would end up in
    logs and shell history; use the environment or netrc instead.
    """
    url = str(source)[len(PREFIX) :] if is_dicomweb(source) else str(source)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{source!r} is not a DICOMweb URL; write dicomweb:http(s)://HOST[:PORT]/PREFIX, "
            "e.g. dicomweb:http://127.0.0.1:8042/dicom-web"
        )
    if parts.username or parts.password:
        raise ConfigError(
            "do not put credentials in the DICOMweb URL; set CXR_CAD_DICOMWEB_USER and "
            "CXR_CAD_DICOMWEB_PASSWORD (or CXR_CAD_DICOMWEB_TOKEN, or a ~/.netrc entry)"
        )
    return url.rstrip("/")


class _WildcardAdapter(HTTPAdapter):
    """An :class:`~requests.adapters.HTTPAdapter` that sends ``*`` and ``?`` in a URL's query unescaped."""

    def send(self, request, *args, **kwargs):
        url = str(request.url or "")
        base, sep, query = url.partition("?")
        if sep and ("%2A" in query or "%3F" in query):
            request.url = base + sep + query.replace("%2A", "*").replace("%3F", "?")
        return super().send(request, *args, **kwargs)


def _session(retries: int):
    session = requests.Session()
    retry = Retry(
        total=retries,
        connect=retries,
        read=retries,
        status=retries,
        backoff_factor=0.5,
        status_forcelist=(429, 500, 502, 503, 504),
        allowed_methods=None,  # STOW is idempotent per SOP UID
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = _WildcardAdapter(max_retries=retry, pool_maxsize=16)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    token = os.environ.get(TOKEN_ENV)
    user, password = os.environ.get(USER_ENV), os.environ.get(PASSWORD_ENV)
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif user:
        if password is None:
            raise ConfigError(f"{USER_ENV} is set but {PASSWORD_ENV} is not; set both, or neither to use ~/.netrc")
        session.auth = (user, password)
    # else: requests reads ~/.netrc (or $NETRC) for the host on each request (trust_env)
    ca = os.environ.get(CA_BUNDLE_ENV)
    session.verify = ca if ca else True
    return session


def make_client(url: str, *, retries: int | None = None) -> DICOMwebClient:
    """A :class:`dicomweb_client.DICOMwebClient` for ``url`` (with or without the ``dicomweb:`` prefix).

    Raises ConfigError (a UsageError) for a malformed URL or half-set credentials. Nothing is sent yet.
    """
    base = parse_url(url)
    if retries is None:
        try:
            retries = int(os.environ.get(RETRIES_ENV, "4"))
        except ValueError as exc:
            raise ConfigError(f"{RETRIES_ENV} must be a whole number of retries") from exc
    client = DICOMwebClient(base, session=_session(max(0, retries)), timeout=TIMEOUT_S)
    # dicomweb-client's own retry layer would retry again on top of urllib3's: off.
    client.set_http_retry_params(retry=False)
    log.info("DICOMweb archive %s (credentials: %s)", base, auth_kind())
    return client


def auth_kind() -> str:
    """Which kind of credentials will be used, for logs: never the credentials themselves."""
    if os.environ.get(TOKEN_ENV):
        return "bearer token from the environment"
    if os.environ.get(USER_ENV):
        return "basic, user and password from the environment"
    return "netrc entry if any"


def network_reason(exc: BaseException) -> tuple[str, str]:
    """(reason code, one-line detail without credentials) for a failed DICOMweb request."""
    response = getattr(exc, "response", None)
    if isinstance(exc, requests.HTTPError) and response is not None:
        code = NOT_FOUND_IN_ARCHIVE if response.status_code == 404 else FETCH_FAILED
        return code, f"HTTP {response.status_code} {response.reason or ''}".strip()
    if isinstance(exc, requests.RequestException):
        return NETWORK_ERROR, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    return FETCH_FAILED, f"{type(exc).__name__}: {str(exc)[:200]}"
