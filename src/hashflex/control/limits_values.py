"""The limits book's values: acknowledgements of managers' changes (:class:`LimitsAck`), a manager's limit part
(:class:`ManagerLimit`), an in-memory hold (:class:`Hold`), and the content hash and source labels that make
answers idempotent. Split from :mod:`hashflex.control.limits` along its seam; pure.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any


from hashflex.frames import in_force
from hashflex.messages import (
    NoiseCapOverride,
)



__all__ = ["Hold", "LimitsAck", "ManagerLimit", "STORE_UNAVAILABLE", "content_hash", "limits_source"]

STORE_UNAVAILABLE = "store_unavailable"
_ANSWERS_KEPT = 5_000  # idempotent answers remembered (oldest forgotten first)




def content_hash(payload: dict[str, Any]) -> str:
    """SHA-256 (hex, first 16 chars) of a message's canonical JSON: equal content, equal hash.

    Parameters
    ----------
    payload : dict
        The message as JSON-ready data (keys sorted, compact separators, other values by ``str``).

    Returns
    -------
    str
        16 lowercase hex digits.
    """
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def limits_source(issuer: str) -> str:
    """The source label of a manager's import limit, e.g. ``limits:site_manager``.

    Parameters
    ----------
    issuer : str
        The site manager (one of ``profile.site.managers``).

    Returns
    -------
    str
        ``"limits:<issuer>"``.
    """
    return f"limits:{issuer}"


@dataclass(frozen=True)
class LimitsAck:
    """The answer to one ``in/limits`` message, published on ``out/limits/ack``.

    ``change_id`` is ``<issuer>@<issued_at ISO>#<content hash>``: unique per distinct message, so two
    changes in the same second are two changes, and a redelivery is recognised.

    Parameters
    ----------
    change_id : str
        ``<issuer>@<issued_at ISO>#<content hash>`` (:meth:`LimitsBook.limits_change_id`).
    issuer : str
        The message's issuer.
    issued_at : datetime
        The message's ``issued_at``, timezone-aware.
    status : str
        ``accepted`` or ``rejected``.
    reason : str
        What was accepted, or why not (the field named).
    acked_at : datetime
        When the answer was given, timezone-aware.
    """

    change_id: str
    issuer: str
    issued_at: datetime
    status: str  # "accepted" | "rejected"
    reason: str
    acked_at: datetime

    @property
    def accepted(self) -> bool:
        """True when ``status`` is ``accepted``."""
        return self.status == "accepted"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (times ISO 8601), the payload of ``out/limits/ack``."""
        return {"change_id": self.change_id, "issuer": self.issuer, "issued_at": self.issued_at.isoformat(),
                "status": self.status, "reason": self.reason, "acked_at": self.acked_at.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LimitsAck:
        """The answer from :meth:`to_json` (a remembered answer, given again on a redelivery).

        Parameters
        ----------
        data : dict
            Every field of :meth:`to_json`.

        Returns
        -------
        LimitsAck
            The answer.

        Raises
        ------
        KeyError
            If a field is missing.
        ValueError
            If a time is not ISO 8601.
        """
        return cls(data["change_id"], data["issuer"], datetime.fromisoformat(data["issued_at"]), data["status"],
                   data["reason"], datetime.fromisoformat(data["acked_at"]))


@dataclass(frozen=True)
class ManagerLimit:
    """One part (``import``, ``noise`` or ``carbon``) of a site manager's accepted limits change.

    Parameters
    ----------
    issuer : str
        The site manager.
    part : str
        ``import``, ``noise`` or ``carbon``.
    change_id : str
        The change it came from (:meth:`LimitsBook.limits_change_id`).
    issued_at : datetime
        Binds from then, timezone-aware.
    valid_until : datetime or None
        Binds until then; None: no expiry.
    import_limit_kw : float, optional
        The import limit of an ``import`` part, kW.
    noise_caps : tuple of NoiseCapOverride
        The cap overrides of a ``noise`` part (receptor, window, dB(A)).
    carbon_period : str, optional
        ``day`` or ``month`` for a ``carbon`` part.
    carbon_budget_kg : float, optional
        The budget of a ``carbon`` part, kg CO2 per period.
    """

    issuer: str
    part: str
    change_id: str
    issued_at: datetime
    valid_until: datetime | None
    import_limit_kw: float | None = None
    noise_caps: tuple[NoiseCapOverride, ...] = ()
    carbon_period: str | None = None  # "day" | "month"
    carbon_budget_kg: float | None = None

    def in_force(self, start: datetime, end: datetime | None = None) -> bool:
        """In force at ``start`` or at any moment of ``[start, end)`` (:func:`hashflex.frames.in_force`)."""
        return in_force(self.issued_at, self.valid_until, start, end)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form (times ISO 8601, caps as their JSON), read back by :meth:`from_json`."""
        return {"issuer": self.issuer, "part": self.part, "change_id": self.change_id,
                "issued_at": self.issued_at.isoformat(),
                "valid_until": None if self.valid_until is None else self.valid_until.isoformat(),
                "import_limit_kw": self.import_limit_kw,
                "noise_caps": [c.model_dump(mode="json") for c in self.noise_caps],
                "carbon_period": self.carbon_period, "carbon_budget_kg": self.carbon_budget_kg}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ManagerLimit:
        """The limit from :meth:`to_json`.

        Parameters
        ----------
        data : dict
            The fields of :meth:`to_json` (``issuer``, ``part``, ``change_id`` and ``issued_at``
            required; the others default to absent).

        Returns
        -------
        ManagerLimit
            The limit.

        Raises
        ------
        KeyError
            If a required field is missing.
        ValueError
            If a time is not ISO 8601 (or a noise cap does not validate: ``pydantic.ValidationError``,
            a ValueError).
        """
        until = data.get("valid_until")
        return cls(data["issuer"], data["part"], data["change_id"], datetime.fromisoformat(data["issued_at"]),
                   None if until is None else datetime.fromisoformat(until), data.get("import_limit_kw"),
                   tuple(NoiseCapOverride.model_validate(c) for c in data.get("noise_caps", [])),
                   data.get("carbon_period"), data.get("carbon_budget_kg"))


@dataclass(frozen=True)
class Hold:
    """A limit held in memory only (its message could not be made durable).

    Parameters
    ----------
    key : str
        ``DR:<event id>`` or ``limits:<issuer>``: a durable message with the same key supersedes it.
    limit_kw : float
        The import limit held, kW.
    start : datetime
        Binds from then, timezone-aware.
    end : datetime or None
        Binds until then; None: until superseded.
    """

    key: str  # "DR:<event id>" or "limits:<issuer>"
    limit_kw: float
    start: datetime
    end: datetime | None

    def in_force(self, start: datetime, end: datetime | None = None) -> bool:
        """In force at ``start`` or at any moment of ``[start, end)`` (:func:`hashflex.frames.in_force`)."""
        return in_force(self.start, self.end, start, end)
