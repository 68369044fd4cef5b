"""Setpoints for a whole group of miners in one MQTT message (issue 18: the message design, not a
hand-written protocol stack, makes a 100,000-miner site fast).

Topic and payload
-----------------
``hashflex/<site>/out/setpoints/<group>`` carries a :class:`GroupSetpointsMessage` (JSON): the group,
one ``issued_at`` and one ``expires_at`` for every setpoint in it, and one
:class:`MinerSetpointEntry` (``miner_id``, ``mode``, ``power_target_kw``) per miner::

    {"group_id": "air", "issued_at": "2026-07-01T18:00:00Z", "expires_at": "2026-07-01T18:15:00Z",
     "setpoints": [{"miner_id": "air-0001", "mode": "eco", "power_target_kw": 2.9},
                   {"miner_id": "air-0002", "mode": "sleep", "power_target_kw": 0.0}]}

A message speaks only for the miners it lists: a miner not listed keeps the setpoint it follows (and
falls back to sleep when that expires). A group with more miners than fit one message is sent as
several messages on the same topic. Whoever follows the topic (an edge agent for a rack, or each miner
filtering its own row) applies each listed miner's row until ``expires_at`` exactly as it would a
per-miner :class:`~hashflex.messages.SetpointMessage` (the per-miner topic
``out/setpoint/<miner>``, which stays for miners that only speak it).

The wire schema follows :mod:`hashflex.messages`'s conventions (strict ids that are safe topic levels,
timezone-aware UTC timestamps, unknown fields rejected, finite numbers); it lives here until the
messages module has room for it.

API: ``GroupSetpointsMessage``, ``MinerSetpointEntry``, ``group_setpoints_topic(site, group_id)``,
``GROUP_SETPOINTS_LEVEL``; encoding a driver's batch: ``group_messages(...)`` and
``per_miner_messages(...)`` give :class:`OutboundMessage` (topic, payload, Message Expiry Interval and
the batch positions each message carries); ``group_messages_from_codes(...)`` encodes a group's rows
given as mode codes into a small (mode name, power) table, checking the table and the id column once
instead of every row (the same bytes and refusals as ``group_messages_from_columns``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from itertools import chain
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Annotated

import numpy as np

from typing_extensions import TypedDict

from pydantic import (AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError,
                      model_validator)

from hashflex.drivers.base import Setpoint
from hashflex.messages import SetpointMessage, Topics

__all__ = ["GROUP_SETPOINTS_LEVEL", "GroupSetpointsMessage", "MinerSetpointEntry", "OutboundMessage",
           "group_messages", "group_messages_from_codes", "group_messages_from_columns", "group_setpoints_topic",
           "per_miner_messages"]

GROUP_SETPOINTS_LEVEL = "out/setpoints"
"""Topic levels after the site prefix: ``hashflex/<site>/out/setpoints/<group>``."""

_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]*$"  # the same rule as hashflex.messages.Identifier
_Id = Annotated[str, Field(min_length=1, max_length=128, pattern=_ID_PATTERN)]
_Utc = Annotated[AwareDatetime, AfterValidator(lambda value: value.astimezone(timezone.utc))]


def group_setpoints_topic(site: str, group_id: str) -> str:
    """The topic of a group's setpoints.

    Parameters
    ----------
    site : str
        The site id (topic prefix ``hashflex/<site>/``).
    group_id : str
        The profile's miner group id, or ``+`` for a subscription to every group.

    Returns
    -------
    str
        ``hashflex/<site>/out/setpoints/<group_id>``.

    Raises
    ------
    ValueError
        ``site`` or ``group_id`` is not a valid topic level (``/``, ``#``, spaces, empty).
    """
    for name, value in (("site", site), ("group_id", group_id)):
        if not (re.match(_ID_PATTERN, value) or (name == "group_id" and value == "+")):
            raise ValueError(f"{name} {value!r}: not a valid topic level")
    return f"hashflex/{site}/{GROUP_SETPOINTS_LEVEL}/{group_id}"


class MinerSetpointEntry(TypedDict):
    """One miner's row in a :class:`GroupSetpointsMessage` (a typed dict: rows are validated by
    pydantic-core without building a model per miner, 2x faster at 100,000 rows).

    Parameters
    ----------
    miner_id : str
        The miner, as named by ``SiteProfile.miner_ids``.
    mode : str
        A mode name of the miner's group, or ``"sleep"``.
    power_target_kw : float
        The mode's planned power draw, kW, in [0, 100].
    """

    __pydantic_config__ = ConfigDict(extra="forbid", allow_inf_nan=False)  # type: ignore[misc]

    miner_id: _Id
    mode: _Id
    power_target_kw: Annotated[float, Field(ge=0, le=100)]


class GroupSetpointsMessage(BaseModel):
    """What the listed miners of one group should do until ``expires_at``; see the module docstring.

    Parameters
    ----------
    group_id : str
        The profile group (also the last topic level).
    issued_at, expires_at : datetime
        Timezone-aware (normalised to UTC); ``expires_at`` after ``issued_at``. After ``expires_at``
        each listed miner falls back to sleep unless a newer setpoint renewed it.
    setpoints : list of MinerSetpointEntry
        At least one row; each miner at most once.

    Raises
    ------
    pydantic.ValidationError
        A field breaks its rule; the error's location names the field (``setpoints.3.miner_id``).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    group_id: _Id
    issued_at: _Utc
    expires_at: _Utc
    setpoints: list[MinerSetpointEntry] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> GroupSetpointsMessage:
        if self.expires_at <= self.issued_at:
            raise ValueError("expires_at: must be after issued_at")
        seen: set[str] = set()
        for entry in self.setpoints:
            if entry["miner_id"] in seen:
                raise ValueError(f"setpoints: miner_id {entry['miner_id']!r} listed twice")
            seen.add(entry["miner_id"])
        return self

    def setpoint_messages(self) -> list[SetpointMessage]:
        """The per-miner form of every row, in order.

        Returns
        -------
        list of SetpointMessage
            One per listed miner, with this message's ``issued_at`` and ``expires_at``.
        """
        return [SetpointMessage(miner_id=e["miner_id"], mode=e["mode"], power_target_kw=e["power_target_kw"],
                                issued_at=self.issued_at, expires_at=self.expires_at) for e in self.setpoints]

    @property
    def miner_ids(self) -> list[str]:
        """The listed miners, in order."""
        return [e["miner_id"] for e in self.setpoints]

    def remaining_s(self, now: datetime) -> float:
        """Seconds from ``now`` until ``expires_at`` (negative once expired).

        Parameters
        ----------
        now : datetime
            Timezone-aware.

        Returns
        -------
        float
            ``(expires_at - now)`` in seconds.
        """
        return (self.expires_at - now).total_seconds()


# --------------------------------------------------------------------------- encoding a batch


@dataclass
class OutboundMessage:
    """One message to publish and the batch positions of the setpoints it carries.

    Parameters
    ----------
    topic : str
        Where it goes.
    payload : bytes
        JSON.
    expiry_s : int
        MQTT v5 Message Expiry Interval, whole seconds (>= 1).
    indexes : list of int
        Positions in the driver's batch of the setpoints it carries.
    group : bool
        True for a :class:`GroupSetpointsMessage`, False for a per-miner ``SetpointMessage``.
    """

    topic: str
    payload: bytes
    expiry_s: int
    indexes: list[int]
    group: bool


def expiry_s(expires_at: datetime, now: datetime) -> int:
    """MQTT v5 Message Expiry Interval for a deadline.

    Parameters
    ----------
    expires_at, now : datetime
        Timezone-aware.

    Returns
    -------
    int
        Whole seconds left until ``expires_at``, rounded down, at least 1.
    """
    return max(1, int((expires_at - now).total_seconds()))


def per_miner_messages(topics: Topics, batch: list[Setpoint], indexes: list[int], now: datetime,
                       rejected: dict[int, str]) -> list[OutboundMessage]:
    """One ``SetpointMessage`` on ``out/setpoint/<miner>`` per setpoint.

    Parameters
    ----------
    topics : Topics
        The site's topic names.
    batch : list of Setpoint
        The driver's batch.
    indexes : list of int
        The positions in ``batch`` to encode.
    now : datetime
        Timezone-aware; the expiry interval counts from it.
    rejected : dict of int to str
        Filled with ``position → reason`` (naming the field) for setpoints the schema refuses.

    Returns
    -------
    list of OutboundMessage
        One per accepted setpoint, in ``indexes`` order.
    """
    messages = []
    for i in indexes:
        sp = batch[i]
        try:
            payload = SetpointMessage(miner_id=sp.miner_id, mode=sp.mode, power_target_kw=sp.power_target_kw,
                                      issued_at=sp.issued_at, expires_at=sp.expires_at).model_dump_json()
        except ValidationError as exc:
            rejected[i] = f"invalid setpoint: {_errors(exc)}"
            continue
        messages.append(OutboundMessage(topics.setpoint(sp.miner_id), payload.encode(),
                                        expiry_s(sp.expires_at, now), [i], group=False))
    return messages


def group_messages(site: str, batch: list[Setpoint], indexes: list[int], now: datetime, max_rows: int,
                   rejected: dict[int, str], per_miner: list[int]) -> list[OutboundMessage]:
    """``GroupSetpointsMessage`` s for setpoints of one group sharing ``issued_at`` and ``expires_at``.

    Chunks of at most ``max_rows`` rows; a miner listed twice starts a new chunk (the later setpoint
    arrives later, as on the per-miner topic).

    Parameters
    ----------
    site : str
        Site id.
    batch : list of Setpoint
        The driver's batch.
    indexes : list of int
        Positions in ``batch``, all with the group, ``issued_at`` and ``expires_at`` of the first.
    now : datetime
        Timezone-aware; the expiry interval counts from it.
    max_rows : int
        Most rows per message (>= 1).
    rejected : dict of int to str
        Filled with ``position → reason`` (naming the field, e.g. ``miner_id``) for rows the schema
        refuses; they are left out of the message, the other rows go.
    per_miner : list of int
        Extended with the positions that cannot go in a group message (a group id that is not a topic
        level); the caller sends them per miner.

    Returns
    -------
    list of OutboundMessage
        The group's messages, each on ``hashflex/<site>/out/setpoints/<group>``.
    """
    first = batch[indexes[0]]
    picked = [batch[i] for i in indexes]
    local: dict[int, str] = {}
    local_per_miner: list[int] = []
    # a batch has a few (mode, power) pairs: rows as codes into them (group_messages_from_codes)
    table: dict[tuple[str, float], int] = {}
    codes = [table.setdefault((sp.mode, sp.power_target_kw), len(table)) for sp in picked]
    messages = group_messages_from_codes(site, first.group_id, first.issued_at, first.expires_at,
                                         [sp.miner_id for sp in picked], codes, [k[0] for k in table],
                                         [k[1] for k in table], 0, now, max_rows, local, local_per_miner)
    for message in messages:  # positions in `picked` -> positions in `batch`
        message.indexes = [indexes[k] for k in message.indexes]
    rejected.update({indexes[k]: reason for k, reason in local.items()})
    per_miner.extend(indexes[k] for k in local_per_miner)
    return messages


def group_messages_from_columns(site: str, group_id: str, issued_at: datetime, expires_at: datetime,
                                miner_ids: list[str], modes: list[str], power_target_kw: list[float], offset: int,
                                now: datetime, max_rows: int, rejected: dict[int, str],
                                per_miner: list[int]) -> list[OutboundMessage]:
    """:func:`group_messages` from columns (issue 18: a driver's columnar batch, no ``Setpoint`` per
    row): the same chunks, payloads and refusals.

    Parameters
    ----------
    site, group_id : str
        Site id and the group of every row.
    issued_at, expires_at : datetime
        Timezone-aware, shared by every row.
    miner_ids, modes, power_target_kw : lists of equal length
        Per row: the miner, its mode name (or ``sleep``), its power target (kW).
    offset : int
        The batch position of row 0 (``OutboundMessage.indexes``, ``rejected`` and ``per_miner`` hold
        ``offset + row``).
    now : datetime
        Timezone-aware; the expiry interval counts from it.
    max_rows : int
        Most rows per message (>= 1).
    rejected : dict of int to str
        Filled with ``position → reason`` (naming the field) for rows the schema refuses.
    per_miner : list of int
        Extended with the positions that cannot go in a group message (a group id that is not a topic
        level).

    Returns
    -------
    list of OutboundMessage
        The group's messages, each on ``hashflex/<site>/out/setpoints/<group>``.
    """
    n = len(miner_ids)
    if not n:
        return []
    try:
        topic = group_setpoints_topic(site, group_id)
    except ValueError:
        per_miner.extend(range(offset, offset + n))
        return []
    if len(set(miner_ids)) == n:  # the usual case: each miner once
        chunks = [list(range(k, min(k + max_rows, n))) for k in range(0, n, max_rows)]
    else:  # a miner listed twice starts a new chunk
        chunks = [[]]
        seen: set[str] = set()
        for k, miner_id in enumerate(miner_ids):
            if len(chunks[-1]) >= max_rows or miner_id in seen:
                chunks.append([])
                seen = set()
            chunks[-1].append(k)
            seen.add(miner_id)
    expiry = expiry_s(expires_at, now)
    messages = []
    for chunk in chunks:
        while chunk:
            rows = [{"miner_id": miner_ids[k], "mode": modes[k], "power_target_kw": power_target_kw[k]} for k in chunk]
            try:
                message = GroupSetpointsMessage.model_validate({"group_id": group_id, "issued_at": issued_at,
                                                                "expires_at": expires_at, "setpoints": rows})
            except ValidationError as exc:
                bad = _bad_rows(exc, len(chunk))
                if not bad:  # not a row's fault (cannot happen for valid Setpoints): send per miner
                    per_miner.extend(offset + k for k in chunk)
                    break
                for j in bad:
                    rejected[offset + chunk[j]] = f"invalid setpoint: {_errors(exc, row=j)}"
                chunk = [k for j, k in enumerate(chunk) if j not in bad]
                continue
            messages.append(OutboundMessage(topic, message.model_dump_json().encode(), expiry,
                                            [offset + k for k in chunk], group=True))
            break
    return messages


_ENTRY = TypeAdapter(MinerSetpointEntry)
# Every id of a column at once, joined by newlines (a character no valid id holds): one C-level match
# over the whole column instead of one validation per row. The count of newlines then proves that
# each id is one segment (an id with a newline of its own would add one).
_ID_COLUMN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}(?:\n[A-Za-z0-9][A-Za-z0-9_.:-]{0,127})*")
_SETPOINTS_KEY = '"setpoints":['


# The last id column found valid and unique, per group, with each row's JSON up to its id: a fleet's
# ids rarely change between batches, and comparing a column with the same str objects is a pointer
# test per row (about 1 ms at 100,000 rows, against about 50 ms to check it again and 35 ms to format
# the rows' heads). Bounded: cleared when it holds too many groups.
_CHECKED_IDS: dict[str, tuple[list[str], list[str]]] = {}
_CHECKED_IDS_MAX = 1024


def _checked_row_heads(group_id: str, miner_ids: list[str]) -> list[str] | None:
    """``{"miner_id":"<id>"`` per row when the ids are unique and each is a valid id, else None
    (cached per group, see above)."""
    cached = _CHECKED_IDS.get(group_id)
    if cached is not None and cached[0] == miner_ids:
        return cached[1]
    if len(set(miner_ids)) != len(miner_ids) or not _valid_id_column(miner_ids):
        return None
    if len(_CHECKED_IDS) >= _CHECKED_IDS_MAX:
        _CHECKED_IDS.clear()
    heads = ['{"miner_id":"' + m + '"' for m in miner_ids]
    _CHECKED_IDS[group_id] = (list(miner_ids), heads)  # a copy: the caller's list may change after
    return heads


def _valid_id_column(miner_ids: list[str]) -> bool:
    """True when every id is a str that :data:`_Id` accepts (1-128 characters of the id rule), checked
    in one regular-expression pass."""
    if not all(type(m) is str for m in miner_ids):  # noqa: E721 - exactly str: what the cache may compare
        return False
    try:
        joined = "\n".join(miner_ids)
    except TypeError:  # not all str: let pydantic name the row and the fault
        return False
    return joined.count("\n") == len(miner_ids) - 1 and _ID_COLUMN.fullmatch(joined) is not None


def group_messages_from_codes(site: str, group_id: str, issued_at: datetime, expires_at: datetime,
                              miner_ids: list[str], codes: Sequence[int] | np.ndarray, names: Sequence[str],
                              power_target_kw: Sequence[float], offset: int, now: datetime, max_rows: int,
                              rejected: dict[int, str], per_miner: list[int]) -> list[OutboundMessage]:
    """:func:`group_messages_from_columns` with each row's mode given as a code into a small table
    (issue 18: at 100,000 miners, validating and serialising every row with pydantic was most of a
    DR cut's 0.4-0.55 s of encoding).

    The table (each code's mode name and power), the group's header (group id, times) and the id
    column are checked once with the same rules (the header and each table entry by pydantic itself,
    the ids by one regular expression of the same pattern and length, uniqueness by a set); each
    row's JSON is then its id spliced into its code's pre-serialised text. When anything fails those
    checks (a bad id, a bad mode name or power, a miner listed twice, a bad header), the group is
    encoded by :func:`group_messages_from_columns`, row by row, so refusals, reasons and chunks are
    exactly its own. The payloads are byte for byte those of :func:`group_messages_from_columns`
    (``tests/test_dr_fast_encode.py``).

    Parameters
    ----------
    site, group_id : str
        Site id and the group of every row.
    issued_at, expires_at : datetime
        Timezone-aware, shared by every row.
    miner_ids : list of str
        [N] the miners.
    codes : sequence of int or np.ndarray
        [N] per row, an index into ``names`` and ``power_target_kw``.
    names : sequence of str
        [K] mode name (or ``sleep``/``off``) per code.
    power_target_kw : sequence of float
        [K] power target per code, kW.
    offset : int
        The batch position of row 0.
    now : datetime
        Timezone-aware; the expiry interval counts from it.
    max_rows : int
        Most rows per message (>= 1).
    rejected : dict of int to str
        Filled with ``position → reason`` (naming the field) for rows the schema refuses.
    per_miner : list of int
        Extended with the positions that cannot go in a group message.

    Returns
    -------
    list of OutboundMessage
        The group's messages, each on ``hashflex/<site>/out/setpoints/<group>``.

    Raises
    ------
    ValueError
        ``codes`` not of length N.
    IndexError
        A code outside ``names``.
    """
    n = len(miner_ids)
    if not n:
        return []
    code_array = np.asarray(codes, dtype=np.int64)
    if code_array.shape != (n,):
        raise ValueError(f"group {group_id}: {code_array.shape} mode codes for {n} miners")
    if code_array.min() < 0 or code_array.max() >= len(names):
        raise IndexError(f"group {group_id}: mode code outside 0..{len(names) - 1}")
    try:
        topic = group_setpoints_topic(site, group_id)
    except ValueError:
        per_miner.extend(range(offset, offset + n))
        return []
    fast = _row_texts(group_id, issued_at, expires_at, miner_ids, code_array, names, power_target_kw)
    if fast is None:  # something to refuse or split: row by row, as always
        code_list = code_array.tolist()
        return group_messages_from_columns(site, group_id, issued_at, expires_at, miner_ids,
                                           [names[k] for k in code_list], [power_target_kw[k] for k in code_list],
                                           offset, now, max_rows, rejected, per_miner)
    header, heads, tails = fast
    expiry = expiry_s(expires_at, now)
    # each row is its head and its code's tail (with the comma that follows every row but a
    # message's last): interleaved and joined in C, not formatted row by row
    tail_of = np.array([tails.get(k, "") + "," for k in range(len(names))], dtype=object)[code_array].tolist()
    return [OutboundMessage(topic, (header + "".join(chain.from_iterable(zip(heads[k:k + max_rows],
                                                                             tail_of[k:k + max_rows])))[:-1]
                                    + "]}").encode(), expiry,
                            list(range(offset + k, offset + min(k + max_rows, n))), group=True)
            for k in range(0, n, max_rows)]


def _row_texts(group_id: str, issued_at: datetime, expires_at: datetime, miner_ids: list[str], codes: np.ndarray,
               names: Sequence[str], power_target_kw: Sequence[float]
               ) -> tuple[str, list[str], dict[int, str]] | None:
    """(the payload's text up to the first row, each row's JSON up to its id, each code's JSON after
    the id), or None when a check fails."""
    heads = _checked_row_heads(group_id, miner_ids)
    if heads is None:
        return None
    used = np.unique(codes).tolist()
    tails: dict[int, str] = {}
    probe = miner_ids[0]
    lead = f'{{"miner_id":"{probe}"'
    try:
        for code in used:
            entry = _ENTRY.validate_python({"miner_id": probe, "mode": names[code],
                                            "power_target_kw": power_target_kw[code]})
            text = _ENTRY.dump_json(entry).decode()
            if not text.startswith(lead):  # not the layout this splices into: take the slow path
                return None
            tails[code] = text[len(lead):]
        first = _ENTRY.validate_python({"miner_id": probe, "mode": names[int(codes[0])],
                                        "power_target_kw": power_target_kw[int(codes[0])]})
        head = GroupSetpointsMessage.model_validate({"group_id": group_id, "issued_at": issued_at,
                                                     "expires_at": expires_at, "setpoints": [first]})
    except ValidationError:
        return None
    text = head.model_dump_json()
    cut = text.find(_SETPOINTS_KEY)
    if cut < 0 or text.count(_SETPOINTS_KEY) != 1:
        return None
    return text[:cut + len(_SETPOINTS_KEY)], heads, tails


def _errors(exc: ValidationError, row: int | None = None) -> str:
    """``field: message`` for each error (of one row of a group message when ``row`` is given)."""
    errors = exc.errors()
    if row is not None:
        errors = [{**e, "loc": e["loc"][2:]} for e in errors if e["loc"][:2] == ("setpoints", row)]
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)


def _bad_rows(exc: ValidationError, rows: int) -> set[int]:
    """Rows of a group message named by the errors (empty when an error is not a row's)."""
    bad: set[int] = set()
    for error in exc.errors():
        loc = error["loc"]
        if len(loc) < 2 or loc[0] != "setpoints" or not isinstance(loc[1], int) or not 0 <= loc[1] < rows:
            return set()
        bad.add(loc[1])
    return bad
