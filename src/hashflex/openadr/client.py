"""A small OpenADR 3 VTN client: OAuth2 client credentials + the REST calls a VEN makes.

Why not a library: ``openadr3-client`` (ElaadNL, Apache-2.0, the maintained one) requires Python
≥ 3.12 and hashflex runs on 3.11; it also brings oauthlib/requests-oauthlib/pycountry. ``toadr3`` is
asyncio/aiohttp (hashflex's I/O is threads + requests); ``openadr3``/``python-oa3-client`` are alpha
and pull httpx, openapi-core and pendulum (and the latter installs a second module named
``openadr3_client``); ``oadr30-ven-ud`` pulls pytz/tzlocal/isodate. What a VEN needs is a dozen
requests; this module is that, on ``requests``.

Configuration (``OpenADRConfig.from_env``): ``HASHFLEX_OPENADR_VTN_URL``, ``HASHFLEX_OPENADR_CLIENT_ID``,
``HASHFLEX_OPENADR_CLIENT_SECRET``; optional ``HASHFLEX_OPENADR_TOKEN_URL`` (default: the VTN's
``GET /auth/server`` ``tokenURL``, else ``<vtn>/auth/token``), ``HASHFLEX_OPENADR_CA_BUNDLE`` and
``HASHFLEX_OPENADR_VERIFY_TLS=0`` (off only for a lab VTN). TLS verification is on by default.

Tokens: fetched with ``grant_type=client_credentials`` (form body, RFC 6749 §4.4), refreshed when
less than ``max(30 s, 10 %)`` of their lifetime is left, and once more on a 401 (the VTN may revoke
a token early). Errors: :class:`VTNUnavailable` for what may pass (timeouts, connection errors, 5xx,
429); :class:`VTNError` for the rest (4xx), with the VTN's ``problem`` detail in the message.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import requests

from hashflex.messages.parse import loads_marking_duplicates

__all__ = ["Listing", "MAX_PAGES", "OpenADRClient", "OpenADRConfig", "TokenManager", "VTNError", "VTNUnavailable"]

log = logging.getLogger(__name__)
PAGE_LIMIT = 50  # the spec's maximum for ``limit``
MAX_PAGES = 200  # 10,000 objects: far more than a site's programs or events; a bound against a looping VTN


class Listing(list):  # type: ignore[type-arg]
    """A collection read from the VTN; ``complete`` False when paging stopped early (``reason``)."""

    complete: bool = True
    reason: str = ""

    def mark_incomplete(self, reason: str) -> None:
        """Mark the listing as possibly incomplete (paging stopped early) and log it.

        Parameters
        ----------
        reason : str
            Why paging stopped (page cap, a page repeated).
        """
        self.complete, self.reason = False, reason
        log.warning("%s: listing may be incomplete", reason)


class VTNError(RuntimeError):
    """The VTN refused a request (4xx); retrying the same request will not help."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class VTNUnavailable(VTNError):
    """The VTN could not be reached or failed (timeout, connection error, 5xx, 429): retry later."""


@dataclass(frozen=True)
class OpenADRConfig:
    """How to reach one VTN: base URL, OAuth2 client credentials, TLS and API version.

    Attributes
    ----------
    vtn_url : str
        The VTN's base URL (the OpenAPI document's server, e.g. ``https://vtn.example/openadr3``).
    client_id, client_secret : str
        OAuth2 client credentials (Definition 3.1.1: client credential flow); the secret is never printed.
    token_url : str or None
        Token endpoint; None: discovered at ``GET /auth/server`` (else ``/auth/token``).
    verify_tls : bool or str
        True, False (lab only) or a CA bundle path.
    timeout_s : float
        Per-request timeout, seconds.
    scope : str or None
        OAuth2 scope, if the VTN asks for one.
    api_version : str
        ``"3.1"`` (default) or ``"3.0"`` (3.0.1 paths and bodies).
    """
    vtn_url: str
    client_id: str
    client_secret: str = ""
    token_url: str | None = None
    verify_tls: bool | str = True  # True, False (lab only) or a CA bundle path
    timeout_s: float = 10.0
    scope: str | None = None
    api_version: str = "3.1"  # "3.0": 3.0.1 paths and bodies (resources under /vens/{id}, report programID)

    def __repr__(self) -> str:  # never print the secret
        return f"OpenADRConfig(vtn_url={self.vtn_url!r}, client_id={self.client_id!r}, token_url={self.token_url!r})"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> OpenADRConfig:
        """Read ``HASHFLEX_OPENADR_VTN_URL``, ``_CLIENT_ID``, ``_CLIENT_SECRET``, ``_TOKEN_URL``, ``_CA_BUNDLE``,
        ``_VERIFY_TLS``.

        Parameters
        ----------
        env : Mapping, optional
            The environment (default ``os.environ``).
        **overrides
            Fields that replace what the environment says.

        Returns
        -------
        OpenADRConfig

        Raises
        ------
        ValueError
            Naming the variable: the VTN URL or the client id is missing.
        """
        env = os.environ if env is None else env
        missing = [k for k in ("HASHFLEX_OPENADR_VTN_URL", "HASHFLEX_OPENADR_CLIENT_ID") if not env.get(k)]
        if missing and not {"vtn_url", "client_id"} <= overrides.keys():
            raise ValueError(f"{', '.join(missing)}: required to reach the OpenADR VTN")
        verify: bool | str = True
        if env.get("HASHFLEX_OPENADR_CA_BUNDLE"):
            verify = env["HASHFLEX_OPENADR_CA_BUNDLE"]
        elif env.get("HASHFLEX_OPENADR_VERIFY_TLS", "1").lower() in ("0", "false", "no"):
            verify = False
        values: dict[str, Any] = {
            "vtn_url": env.get("HASHFLEX_OPENADR_VTN_URL", ""),
            "client_id": env.get("HASHFLEX_OPENADR_CLIENT_ID", ""),
            "client_secret": env.get("HASHFLEX_OPENADR_CLIENT_SECRET", ""),
            "token_url": env.get("HASHFLEX_OPENADR_TOKEN_URL") or None,
            "verify_tls": verify,
        }
        values.update(overrides)
        return cls(**values)


class TokenManager:
    """Client-credentials access token, cached and refreshed before expiry (thread-safe)."""

    def __init__(self, session: requests.Session, config: OpenADRConfig, token_url: Callable[[], str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session, self.config, self._token_url, self.clock = session, config, token_url, clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._refresh_at = 0.0
        self.fetches = 0

    def token(self) -> str:
        """The current access token, fetched or refreshed first when needed.

        Returns
        -------
        str
            A bearer token.

        Raises
        ------
        VTNError
            The token endpoint refused the credentials (not retried); ``VTNUnavailable`` when it is unreachable.
        """
        with self._lock:
            if self._token is None or self.clock() >= self._refresh_at:
                self._fetch()
            assert self._token is not None
            return self._token

    def invalidate(self, token: str) -> None:
        """The VTN said 401 with ``token``: forget it (unless another thread already replaced it)."""
        with self._lock:
            if self._token == token:
                self._token = None

    def _fetch(self) -> None:
        data = {"grant_type": "client_credentials", "client_id": self.config.client_id,
                "client_secret": self.config.client_secret}
        if self.config.scope:
            data["scope"] = self.config.scope
        url = self._token_url()
        try:
            response = self.session.post(url, data=data, timeout=self.config.timeout_s,
                                         verify=self.config.verify_tls, headers={"Accept": "application/json"})
        except requests.exceptions.SSLError as exc:
            raise VTNError(0, f"token endpoint {url}: TLS verification failed ({exc}); give the VTN's CA in "
                              "HASHFLEX_OPENADR_CA_BUNDLE") from exc
        except requests.RequestException as exc:
            raise VTNUnavailable(0, f"token endpoint {url}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 500 or response.status_code == 429:
            raise VTNUnavailable(response.status_code, f"token endpoint {url}: HTTP {response.status_code}")
        if response.status_code != 200:
            raise VTNError(response.status_code, f"token endpoint {url}: HTTP {response.status_code}: "
                                                 f"{_detail(response)} (check client id and secret)")
        body = response.json()
        token = body.get("access_token")
        if not token:
            raise VTNError(response.status_code, f"token endpoint {url}: no access_token in the answer")
        lifetime = float(body.get("expires_in") or 3600)
        self._token = str(token)
        self._refresh_at = self.clock() + lifetime - max(min(30.0, lifetime / 2), lifetime * 0.1)
        self.fetches += 1
        log.info("OpenADR token fetched (lifetime %.0f s)", lifetime)


class OpenADRClient:
    """The VTN REST calls a VEN uses. Every method raises VTNError/VTNUnavailable on failure."""

    def __init__(self, config: OpenADRConfig, session: requests.Session | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if not config.vtn_url:
            raise ValueError("vtn_url: required")
        self.config = config
        self.base = config.vtn_url.rstrip("/")
        self.session = session or requests.Session()
        self.tokens = TokenManager(self.session, config, self._discover_token_url, clock)
        self._token_url: str | None = config.token_url

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()

    # ------------------------------------------------------------------ transport

    def _discover_token_url(self) -> str:
        if self._token_url is None:
            url = f"{self.base}/auth/token"
            try:
                response = self.session.get(f"{self.base}/auth/server", timeout=self.config.timeout_s,
                                            verify=self.config.verify_tls)
                if response.status_code == 200 and response.json().get("tokenURL"):
                    url = str(response.json()["tokenURL"])
            except requests.exceptions.SSLError as exc:
                raise VTNError(0, f"GET /auth/server: TLS verification failed ({exc}); give the VTN's CA in "
                                  "HASHFLEX_OPENADR_CA_BUNDLE") from exc
            except (requests.RequestException, ValueError):
                log.info("GET /auth/server failed; using %s", url)
            self._token_url = url
        return self._token_url

    def request(self, method: str, path: str, *, params: Any = None, body: Any = None) -> Any:
        """One authenticated call; a 401 refreshes the token and retries once. Returns parsed JSON
        (None for an empty body), each object with a repeated key marked
        (:func:`~hashflex.messages.parse.loads_marking_duplicates`: :func:`.models.validate_object` refuses it)."""
        for attempt in (1, 2):
            token = self.tokens.token()
            try:
                response = self.session.request(method, f"{self.base}{path}", params=params, json=body,
                                                timeout=self.config.timeout_s, verify=self.config.verify_tls,
                                                headers={"Authorization": f"Bearer {token}",
                                                         "Accept": "application/json"})
            except requests.exceptions.SSLError as exc:
                raise VTNError(0, f"{method} {path}: TLS verification failed ({exc}); give the VTN's CA in "
                                  "HASHFLEX_OPENADR_CA_BUNDLE") from exc
            except requests.RequestException as exc:
                raise VTNUnavailable(0, f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            if response.status_code == 401 and attempt == 1:
                log.info("%s %s: 401, refreshing the token", method, path)
                self.tokens.invalidate(token)
                continue
            if response.status_code >= 500 or response.status_code == 429:
                raise VTNUnavailable(response.status_code, f"{method} {path}: HTTP {response.status_code}: "
                                                           f"{_detail(response)}")
            if response.status_code >= 400:
                raise VTNError(response.status_code, f"{method} {path}: HTTP {response.status_code}: "
                                                     f"{_detail(response)}")
            if not response.content:
                return None
            try:  # an object with a repeated key is marked, and refused by validate_object (issue 15, task H3)
                return loads_marking_duplicates(response.content)
            except ValueError as exc:
                raise VTNUnavailable(response.status_code, f"{method} {path}: answer is not JSON") from exc
        raise AssertionError("unreachable")

    def _list(self, path: str, params: dict[str, Any]) -> Listing:
        """GET a collection page by page (skip/limit), bounded: stop on a page shorter than ``limit``
        (the last one), after ``MAX_PAGES`` pages, or when a page repeats the previous one (a VTN
        ignoring ``skip``). The last two mark the listing incomplete (``Listing.complete`` False):
        the VEN then cancels nothing for being absent from it."""
        out = Listing()
        skip = 0
        previous: list[Any] | None = None
        for _ in range(MAX_PAGES):
            page = self.request("GET", path, params={**params, "skip": skip, "limit": PAGE_LIMIT})
            page = [] if page is None else page
            if not isinstance(page, list):
                raise VTNError(200, f"GET {path}: a list was expected, got {type(page).__name__}")
            if previous is not None and page and page == previous:
                out.mark_incomplete(f"GET {path}: the page at skip={skip} repeats the previous one (skip ignored?)")
                return out
            out.extend(page)
            if len(page) < PAGE_LIMIT:
                return out
            skip += len(page)
            previous = page
        out.mark_incomplete(f"GET {path}: stopped after {MAX_PAGES} pages")
        return out

    def _targets(self, targets: list[str] | None) -> dict[str, Any]:
        """3.1: the targets the VTN matches against what it granted this VEN. 3.0 filters by one
        targetType at a time and has no granting, so the VEN asks for everything and filters itself
        (``mapping.targets_match``)."""
        if not targets or self.config.api_version.startswith("3.0"):
            return {}
        return {"targets": targets}

    # ------------------------------------------------------------------ objects

    def programs(self, targets: list[str] | None = None) -> Listing:
        """``GET /programs`` (paged): the programs visible to this VEN.

        Parameters
        ----------
        targets : list of str, optional
            Target strings to match (3.1; ignored for 3.0, where the VEN filters itself).

        Returns
        -------
        Listing
            Program objects; ``complete`` False when paging stopped early.
        """
        return self._list("/programs", self._targets(targets))

    def events(self, program_id: str | None = None, targets: list[str] | None = None) -> Listing:
        """``GET /events`` (paged), optionally of one program.

        Parameters
        ----------
        program_id : str, optional
            The ``programID`` query parameter.
        targets : list of str, optional
            As for :meth:`programs`.

        Returns
        -------
        Listing
            Event objects, unvalidated (the VEN validates each on its own).
        """
        params = self._targets(targets)
        if program_id is not None:
            params["programID"] = program_id
        return self._list("/events", params)

    def event(self, event_id: str) -> dict[str, Any]:
        """``GET /events/{eventID}``: one event object."""
        return self.request("GET", f"/events/{event_id}")

    def vens(self, ven_name: str | None = None) -> Listing:
        """``GET /vens`` (paged), optionally filtered by ``venName``."""
        return self._list("/vens", {} if ven_name is None else {"venName": ven_name})

    def create_ven(self, ven_name: str, attributes: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """``POST /vens``: create this VEN's ven object (where the VTN lets a VEN do so).

        Parameters
        ----------
        ven_name : str
            The ``venName`` the utility provisioned.
        attributes : list of dict, optional
            valuesMap attributes.

        Returns
        -------
        dict
            The created ven object.

        Raises
        ------
        VTNError
            The VTN refused (e.g. 403: only business logic may create vens).
        """
        body: dict[str, Any] = {"venName": ven_name}
        if not self.config.api_version.startswith("3.0"):
            body["objectType"] = "VEN_VEN_REQUEST"
        if attributes:
            body["attributes"] = attributes
        return self.request("POST", "/vens", body=body)

    def resources(self, ven_id: str) -> Listing:
        """The ven's resources: ``GET /resources?venID=`` (3.1) or ``GET /vens/{venID}/resources`` (3.0)."""
        if self.config.api_version.startswith("3.0"):
            return self._list(f"/vens/{ven_id}/resources", {})
        return self._list("/resources", {"venID": ven_id})

    def create_resource(self, ven_id: str, resource_name: str) -> dict[str, Any]:
        """Create a resource of the ven (``POST /resources``, 3.0: ``POST /vens/{venID}/resources``).

        Parameters
        ----------
        ven_id : str
            The ven object's id.
        resource_name : str
            The resource's name.

        Returns
        -------
        dict
            The created resource object.
        """
        if self.config.api_version.startswith("3.0"):
            return self.request("POST", f"/vens/{ven_id}/resources", body={"resourceName": resource_name})
        return self.request("POST", "/resources", body={"objectType": "VEN_RESOURCE_REQUEST",
                                                        "resourceName": resource_name, "venID": ven_id})

    def subscriptions(self, client_name: str | None = None) -> Listing:
        """``GET /subscriptions`` (paged), optionally filtered by ``clientName``."""
        return self._list("/subscriptions", {} if client_name is None else {"clientName": client_name})

    def create_subscription(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /subscriptions`` with ``body`` (clientName, programID, objectOperations); the created object."""
        return self.request("POST", "/subscriptions", body=body)

    def delete_subscription(self, subscription_id: str) -> None:
        """``DELETE /subscriptions/{subscriptionID}``."""
        self.request("DELETE", f"/subscriptions/{subscription_id}")

    def reports(self, event_id: str | None = None, client_name: str | None = None) -> Listing:
        """``GET /reports`` (paged), optionally filtered by ``eventID`` and ``clientName``."""
        params = {k: v for k, v in (("eventID", event_id), ("clientName", client_name)) if v is not None}
        return self._list("/reports", params)

    def create_report(self, body: dict[str, Any]) -> dict[str, Any]:
        """``POST /reports`` with ``body`` (:func:`hashflex.openadr.reports.report_body`); the created object.

        Raises
        ------
        VTNError
            The VTN refused the report (4xx); ``VTNUnavailable`` for a failure worth retrying.
        """
        return self.request("POST", "/reports", body=body)


def _detail(response: requests.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body.get("error_description") or body.get("error")
                   or body)[:300]
    return str(body)[:300]
