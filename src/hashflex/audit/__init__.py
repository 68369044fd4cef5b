"""Append-only, hash-chained audit trail of what the site saw, decided and did; ``verify`` checks it.

Table ``audit_log`` in the SAME SQLite database as :class:`hashflex.store.Store`::

    seq INTEGER PRIMARY KEY, at_utc TEXT, kind TEXT, payload TEXT, prev_hash TEXT, hash TEXT

- ``payload`` is canonical JSON: ``sort_keys``, separators ``(",", ":")``, UTF-8 (no ASCII escaping),
  floats as Python ``repr``, no NaN/Infinity (the helpers below turn inf into ``null``).
- ``at_utc`` is ``YYYY-MM-DDTHH:MM:SS.ffffffZ``.
- ``hash = SHA-256(prev_hash + canonical JSON of {"seq", "at", "kind", "payload"})`` as lowercase hex,
  where ``at`` is ``at_utc`` and ``payload`` the decoded payload; the first record's ``prev_hash`` is
  64 zeros (:data:`GENESIS`). Anyone can recompute the chain with ``sqlite3`` + ``hashlib``.

``verify()`` walks the chain and names the first bad record: edited (content or hash column),
deleted (a gap, or a renumbered chain), inserted, or reordered. A chain rewritten from some point on
with correct hashes, or cut at the end, is only caught against a *signed head*: ``sign_head()`` gives
``hf-audit-v1:<seq>:<hash>:<hmac>`` (HMAC-SHA256, key from env ``HASHFLEX_AUDIT_HMAC_KEY``), to be
kept OFF the box (ticket, e-mail, auditor); ``verify_head(signature)`` checks it later, with any
records appended since.

Kinds and payloads (build them with the helpers; the report reads exactly these keys)
-------------------------------------------------------------------------------------
``config``       :func:`config_payload` — on start and on every change: ``reason``, ``profile_hash``,
                 ``profile`` (the full profile as JSON, so reports need nothing but the database).
``measurement``  :func:`measurement_payload` — ONE per control interval, after it ends: the facts
                 every report figure is computed from (means over the interval):
                 ``interval_start`` (ISO Z), ``interval_h``, ``import_kw`` (grid import at the meter),
                 ``renewable_kw`` (on-site renewable generation), ``load_kw`` (site consumption),
                 ``full_load_kw`` (load with every available unit in its top mode, or null),
                 ``hashrate_th_s``, ``noise_dba`` {receptor: LAeq over the interval, energy average of
                 the readings, :func:`laeq_dba`}, ``noise_over_cap_min`` {receptor: minutes of readings
                 above the cap}, ``noise_model_dba`` {receptor: modelled level of the setpoints run},
                 ``noise_cap_dba`` {receptor: cap in force, null = none}, ``intensity_kg_per_mwh``
                 (recorded grid intensity, or null: the report then uses the profile's default
                 factor), ``intensity_source``, ``price_usd_mwh``, ``revenue_usd``,
                 ``energy_cost_usd``, ``dr_baseline_kw`` (optional DR baseline, else null).
``schedule``     :func:`schedule_payload` — each accepted plan: ``status``, ``gap``, ``objective_usd``,
                 ``message``, ``horizon_start``/``horizon_end``, ``intervals``, ``reasons`` {code:
                 intervals}, ``totals`` (profit, revenue, energy cost, import MWh, emissions kg,
                 hashrate PH·h), ``first_row`` (the interval about to run, every schedule column).
``setpoints``    :func:`setpoints_payload` — each batch sent: ``issued_at``, ``expires_at`` (earliest),
                 ``miners``, ``counts`` {"group/mode": units}, ``power_target_kw``, ``source``.
``guard_action`` :func:`guard_action_payload` — ``action``, ``reason``, ``miners`` (count),
                 ``miner_ids`` (first 50), ``event_id`` (DR event that triggered it, or null).
``dr_event``     :func:`dr_event_payload` — every DR message received: ``event`` (the message),
                 ``accepted``, ``reason``, ``limit_kw`` (null = no limit), ``received_at``.
``dr_ack``       :func:`dr_ack_payload` — every acknowledgement sent (the :class:`DRAckMessage`).
``dr_transition`` ``event_id``, ``transition`` (activated, completed, cancelled, modified, deferred),
                 ``status``, ``limit_kw``: the DR lifecycle as the loop saw it.
``input_summary``:func:`input_summary_payload` — per interval: ``accepted`` {kind: n},
                 ``rejected`` {kind: n}, ``rejected_reasons`` {reason: n} (top 20).

Atomic with the state change it describes
-----------------------------------------
``append_in(conn, kind, payload, at)`` writes inside the caller's open transaction (start it with
``BEGIN IMMEDIATE`` so the read of the chain head and the insert hold the write lock together);
the record commits or rolls back with the caller's rows. The :class:`Store` writes through one
writer thread with its own connection, so for rows the store writes use
``append_with_store(store, kind, payload, at, write=fn)``: it runs on the store's writer connection
after every write enqueued before it is committed, and commits ``fn(conn)`` (your extra SQL, may be
None) and the audit record in ONE transaction. It blocks until committed (milliseconds): call it
from the loop thread, never from the MQTT callback thread. Two ways for the loop, per interval::

    payload = schedule_payload(schedule)
    store.put_schedule(payload, created_at=now)                         # enqueued
    append_with_store(store, "schedule", payload, now)                  # (1) committed right after it

    append_with_store(store, "schedule", payload, now, write=lambda c: c.execute(
        "INSERT INTO schedules (created_at_us, payload) VALUES (?, ?)",
        (to_us(now), json.dumps(payload))))                              # (2) one transaction

With (1) a crash between the two loses the audit record, never orders it before the row; (2) is
atomic but writes the store's table by SQL (``store.to_us``). Outside the loop
(CLI, tests) ``AuditLog(path).append(kind, payload, at)`` uses its own connection; SQLite serialises
it with the store's writer (``BEGIN IMMEDIATE`` + busy timeout).

The module is split by seam (issue 11): :mod:`.chain` (format, hashes, verification of rows),
:mod:`.log` (:class:`AuditLog`, :func:`verify_file`, :func:`append_with_store`) and
:mod:`.payloads` (the record builders). Import from ``hashflex.audit``: every name is re-exported.
"""

from __future__ import annotations

from hashflex.audit.chain import (
    GENESIS,
    HMAC_ENV,
    KINDS,
    SIGNATURE_VERSION,
    AuditError,
    AuditRecord,
    VerifyResult,
    append_in,
    canonical_json,
    iso_utc,
    record_hash,
    verify_rows,
)
from hashflex.audit.log import AuditLog, append_with_store, verify_file
from hashflex.audit.payloads import (
    config_payload,
    dr_ack_payload,
    dr_event_payload,
    guard_action_payload,
    input_summary_payload,
    laeq_dba,
    measurement_payload,
    noise_interval_summary,
    schedule_payload,
    setpoints_payload,
)

__all__ = [
    "AuditError", "AuditLog", "AuditRecord", "GENESIS", "HMAC_ENV", "KINDS", "VerifyResult",
    "append_with_store", "canonical_json", "config_payload", "dr_ack_payload", "dr_event_payload",
    "guard_action_payload", "input_summary_payload", "laeq_dba", "measurement_payload", "record_hash",
    "schedule_payload", "setpoints_payload", "noise_interval_summary", "verify_file",
    "SIGNATURE_VERSION", "append_in", "iso_utc", "verify_rows",
]
