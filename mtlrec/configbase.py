"""The base of every typed config object (data, model, training, pipeline)."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors, not silently ignored; configs are immutable values."""

    model_config = ConfigDict(extra="forbid", frozen=True)
