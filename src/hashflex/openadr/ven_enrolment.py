"""The VEN's enrolment: find (or create) the ven object and its resources, learn the targets the
utility granted, list the programs visible to them. A mixin of :class:`hashflex.openadr.ven.VEN`,
split from ``ven.py`` (pure move); the flow is described in that module's docstring."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hashflex.openadr.client import VTNError, VTNUnavailable
from hashflex.openadr.mapping import targets_match
from hashflex.openadr.models import ObjectRejected, Program, Resource, Ven, validate_object

__all__ = ["Enrolment", "EnrolmentMixin"]

log = logging.getLogger(__name__)


@dataclass
class Enrolment:
    """What enrolment learnt: the ven id, the targets granted, the programs (by id) and resource ids (by name)."""
    ven_id: str
    targets: list[str]
    programs: dict[str, dict[str, Any]]  # by program id
    resource_ids: dict[str, str]



class EnrolmentMixin:
    """Enrolment of :class:`~hashflex.openadr.ven.VEN` (``enrol``, ``my_targets``, ``issuer_for``)."""

    @property
    def my_targets(self) -> list[str]:
        """This VEN's target strings: its name, resource names, configured and granted targets (sorted)."""
        names = {self.config.ven_name, *self.config.resource_names, *self.config.targets}
        if self.enrolment is not None:
            names.update(self.enrolment.targets)
        return sorted(names)

    def enrol(self, now: datetime | None = None) -> Enrolment:
        """Find (or create) the ven object and resources; list the programs this VEN is in."""
        now = now or self.clock()
        config = self.config
        found = [v for v in self.client.vens(config.ven_name)
                 if isinstance(v, dict) and v.get("venName") == config.ven_name]
        if found:
            ven = found[0]
        else:
            try:
                ven = self.client.create_ven(config.ven_name)
            except VTNError as exc:
                if isinstance(exc, VTNUnavailable):
                    raise
                raise VTNError(exc.status, f"no ven object named {config.ven_name!r} and the VTN refused to "
                                           f"create one ({exc}); ask the utility to provision it") from exc
            log.info("created ven object %s for %s", ven.get("id") if isinstance(ven, dict) else ven, config.ven_name)
        try:
            ven_object = validate_object(Ven, ven)
        except ObjectRejected as exc:
            self._reject("ven", str(config.ven_name), exc.reason, now, "objects_rejected")
            raise VTNError(200, f"ven object {config.ven_name!r} does not validate: {exc.reason}") from exc
        ven_id = ven_object.id
        granted = {t if isinstance(t, str) else str(v) for t in ven.get("targets") or []
                   for v in ([t] if isinstance(t, str) else t.get("values") or [])}
        resources: dict[str, dict[str, Any]] = {}
        for r in self.client.resources(ven_id):
            try:
                resources[validate_object(Resource, r).resourceName] = r
            except ObjectRejected as exc:
                self._reject("resource", str(r.get("id") if isinstance(r, dict) else r), exc.reason, now,
                             "objects_rejected")
        for name in config.resource_names:
            if name not in resources:
                try:
                    resources[name] = self.client.create_resource(ven_id, name)
                except VTNError as exc:
                    if isinstance(exc, VTNUnavailable):
                        raise
                    log.warning("resource %s not created: %s", name, exc)
        for resource in resources.values():
            targets = resource.get("targets") if isinstance(resource, dict) else None
            granted.update(t for t in (targets if isinstance(targets, list) else []) if isinstance(t, str))
        self.enrolment = Enrolment(ven_id, sorted(granted), {},
                                   {n: str(r.get("id")) for n, r in resources.items() if isinstance(r, dict)})
        wanted = None if config.program_names is None else {*config.program_names, *self.as_program_names}
        programs: dict[str, dict[str, Any]] = {}
        for p in self.client.programs(targets=self.my_targets):
            try:
                program = validate_object(Program, p)
            except ObjectRejected as exc:
                self._reject("program", str(p.get("id") if isinstance(p, dict) else p), exc.reason, now,
                             "objects_rejected")
                continue
            if (wanted is None or program.programName in wanted) and targets_match(p, self.my_targets):
                programs[program.id] = p
        self.enrolment.programs = programs
        log.info("OpenADR VEN %s enrolled in %s", config.ven_name,
                 sorted(p.get("programName") for p in self.enrolment.programs.values()))
        return self.enrolment

    def issuer_for(self, program_id: str) -> str:
        """The DR ``issuer`` of a program's events: ``VENConfig.issuer``, else the program id.

        Parameters
        ----------
        program_id : str
            The VTN's program id.

        Returns
        -------
        str
            Must be in ``profile.dr.issuers`` for the loop to accept the events.
        """
        return self.config.issuer or program_id

    def _enrol_and_subscribe(self, now: datetime) -> None:
        before = set(self.enrolment.programs) if self.enrolment is not None else None
        try:
            self.enrol(now)
        except Exception:
            self._enrol_failures += 1
            delay = min(self.config.retry_max_s, self.config.retry_base_s * 2 ** min(self._enrol_failures - 1, 20))
            self._enrol_retry_at = now + timedelta(seconds=delay)
            raise
        self._enrol_failures, self._enrol_retry_at, self._enrolled_at = 0, None, now
        assert self.enrolment is not None
        if self.config.webhook is not None and (before != set(self.enrolment.programs) or not self.push_active):
            if self._webhook is None:
                self.start_webhook()
            self.subscribe()
