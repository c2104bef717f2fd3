"""The base of every config section: unknown keys are refused and values are frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: ``extra="forbid"`` turns a misspelt key into an error naming it."""

    model_config = ConfigDict(extra="forbid", frozen=True)
