"""The base of every config section: unknown keys are refused, numbers are finite, values are
frozen."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section: ``extra="forbid"`` turns a misspelt key into an error naming it, and
    ``allow_inf_nan=False`` refuses ``.inf``, ``-.inf`` and ``.nan`` in every float setting of
    every section (a non-finite learning rate or scale only shows as non-finite steps, later)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
