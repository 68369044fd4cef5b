"""Site managers' writes: who may write (tokens) and the ``in/limits`` message a write becomes.

Authentication (``ManagerAuth.from_env``), never anonymous:

- ``HASHFLEX_MANAGER_TOKEN``: one shared token; the writer names the issuer, which must be one of
  the profile's ``site.managers`` (the limits book refuses any other);
- ``HASHFLEX_MANAGER_TOKENS_FILE``: a file of ``issuer:token`` lines (``#`` comments; keep it mode
  0600): the token decides the issuer, so one manager cannot write as another.

With neither set, writes are refused (``403 writes disabled``). Tokens are compared in constant
time (``hmac.compare_digest``) and never logged. The token travels as ``Authorization: Bearer
<token>`` (the page sends what the manager typed; it keeps it only in the tab's memory).

:func:`limits_change` builds the same :class:`~hashflex.messages.LimitsChangeMessage` for the page's
form and for ``hashflex limits set|clear``: validation errors name the field.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from hashflex.messages import LimitsChangeMessage

__all__ = ["AuthError", "ManagerAuth", "limits_change", "DEFAULT_NOISE_WINDOW"]

DEFAULT_NOISE_WINDOW = timedelta(hours=24)  # a cap override without valid_until holds for a day


class AuthError(Exception):
    """A write (or protected read) without valid credentials.

    Parameters
    ----------
    status : int
        HTTP status to answer: 401 no or bad token; 403 writes disabled or the wrong issuer.
    message : str
        Why, for the answer's body (never contains the token).
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class ManagerAuth:
    """Tokens that may write: ``shared`` (any listed manager) and ``by_issuer`` (issuer -> its token).

    Attributes
    ----------
    shared : str or None
        The shared token (``HASHFLEX_MANAGER_TOKEN``).
    by_issuer : dict[str, str]
        issuer -> token (``HASHFLEX_MANAGER_TOKENS_FILE``).
    """

    shared: str | None = None
    by_issuer: dict[str, str] = field(default_factory=dict)  # issuer -> token

    @property
    def enabled(self) -> bool:
        """True when any token is configured (else writes are refused, 403)."""
        return bool(self.shared) or bool(self.by_issuer)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ManagerAuth:
        """Tokens from ``HASHFLEX_MANAGER_TOKEN`` and/or ``HASHFLEX_MANAGER_TOKENS_FILE``.

        Parameters
        ----------
        env : Mapping[str, str], optional
            The environment (default ``os.environ``).

        Returns
        -------
        ManagerAuth

        Raises
        ------
        ValueError
            Naming the variable, or the file and line of a malformed entry (a token shorter than 12
            characters is refused).
        OSError
            The tokens file cannot be read.
        """
        env = os.environ if env is None else env
        shared = env.get("HASHFLEX_MANAGER_TOKEN") or None
        if shared is not None and len(shared) < 12:
            raise ValueError("HASHFLEX_MANAGER_TOKEN: at least 12 characters")
        by_issuer: dict[str, str] = {}
        path = env.get("HASHFLEX_MANAGER_TOKENS_FILE")
        if path:
            for number, line in enumerate(Path(path).read_text().splitlines(), 1):
                line = line.strip()
                if not line or line.startswith("#"):
                    continue
                issuer, sep, token = line.partition(":")
                if not sep or not issuer.strip() or len(token.strip()) < 12:
                    raise ValueError(f"{path}:{number}: expected 'issuer:token' with a token of 12+ characters")
                by_issuer[issuer.strip()] = token.strip()
        return cls(shared, by_issuer)

    def check(self, authorization: str | None) -> str | None:
        """Check any valid token (reads when they are protected, and every write).

        Tokens are compared in constant time (``hmac.compare_digest``), every entry checked.

        Parameters
        ----------
        authorization : str or None
            The ``Authorization`` header (``Bearer <token>``).

        Returns
        -------
        str or None
            The issuer a per-issuer token binds, or None for the shared token.

        Raises
        ------
        AuthError
            403 when no token is configured; 401 for a missing or invalid token.
        """
        if not self.enabled:
            raise AuthError(403, "writes disabled: no manager token configured "
                                 "(set HASHFLEX_MANAGER_TOKEN or HASHFLEX_MANAGER_TOKENS_FILE)")
        token = _bearer(authorization)
        if token is None:
            raise AuthError(401, "authentication required: Authorization: Bearer <manager token>")
        matched: str | None = None
        found = False
        for issuer, known in self.by_issuer.items():  # check every entry: no early exit on a match
            if hmac.compare_digest(token.encode(), known.encode()):
                matched, found = issuer, True
        if self.shared is not None and hmac.compare_digest(token.encode(), self.shared.encode()):
            found = True
        if not found:
            raise AuthError(401, "invalid manager token")
        return matched

    def issuer_for(self, authorization: str | None, requested: str | None) -> str:
        """The issuer a write is made as: the token's own issuer, or (shared token) ``requested``.

        Parameters
        ----------
        authorization : str or None
            The ``Authorization`` header.
        requested : str or None
            The issuer the writer names.

        Returns
        -------
        str

        Raises
        ------
        AuthError
            401 bad or missing token; 403 a per-issuer token writing as another issuer, or the shared
            token without an issuer.
        """
        bound = self.check(authorization)
        if bound is not None:
            if requested and requested != bound:
                raise AuthError(403, f"issuer: this token belongs to {bound!r}, not {requested!r}")
            return bound
        if not requested:
            raise AuthError(403, "issuer: required with the shared manager token")
        return requested


def _bearer(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def limits_change(issuer: str, now: datetime, *, reason: str, import_limit_kw: float | None = None,
                  noise_caps_dba: Mapping[str, float] | None = None, carbon_budget_kg: float | None = None,
                  carbon_period: str = "day", valid_minutes: float | None = None,
                  clear: Sequence[str] = ()) -> LimitsChangeMessage:
    """A manager's limits change issued at ``now``, as the ``in/limits`` message.

    Parameters
    ----------
    issuer : str
        The manager (one of the profile's ``site.managers``; the limits book refuses others).
    now : datetime
        Issue time (timezone-aware UTC).
    reason : str
        Why (kept in the audit trail).
    import_limit_kw : float, optional
        Site import limit (kW).
    noise_caps_dba : Mapping[str, float], optional
        receptor id -> cap (dB(A)); without ``valid_minutes`` they hold for :data:`DEFAULT_NOISE_WINDOW`.
    carbon_budget_kg : float, optional
        Carbon budget (kg CO2) for ``carbon_period``.
    carbon_period : str, default "day"
        ``day`` or ``month`` (site local).
    valid_minutes : float, optional
        How long the change holds (minutes); None: no expiry.
    clear : Sequence[str], default ()
        Parts of this issuer's limits to clear (``import``, ``noise``, ``carbon``).

    Returns
    -------
    LimitsChangeMessage

    Raises
    ------
    pydantic.ValidationError
        Naming the field (e.g. ``import_limit_kw``, ``noise_caps.0.cap_dba``).
    ValueError
        ``valid_minutes`` not > 0.
    """
    if valid_minutes is not None and not valid_minutes > 0:
        raise ValueError(f"valid_minutes: must be > 0, got {valid_minutes}")
    until = now + timedelta(minutes=valid_minutes) if valid_minutes is not None else None
    payload: dict[str, Any] = {"issuer": issuer, "reason": reason, "issued_at": now, "valid_until": until}
    if import_limit_kw is not None:
        payload["import_limit_kw"] = import_limit_kw
    if noise_caps_dba:
        payload["noise_caps"] = [{"receptor_id": r, "cap_dba": cap, "window_start": now,
                                  "window_end": until or now + DEFAULT_NOISE_WINDOW}
                                 for r, cap in noise_caps_dba.items()]
    if carbon_budget_kg is not None:
        payload["carbon_budget"] = {"budget_kg": carbon_budget_kg, "period": carbon_period}
    if clear:
        payload["clear"] = list(clear)
    return LimitsChangeMessage.model_validate(payload)
