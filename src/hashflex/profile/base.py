"""What every section of a site profile shares: strict frozen models and the number types."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]


class _Strict(BaseModel):
    """A profile section: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def require_unique(what: str, ids: list[str]) -> None:
    """Raise ValueError naming ``what`` and the ids that occur more than once."""
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise ValueError(f"{what}: duplicate ids {duplicates}")
