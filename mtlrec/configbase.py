"""The base of every typed config object (data, model, training, pipeline)."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """Unknown keys are errors, not silently ignored; configs are immutable values; no
    float option may be inf or NaN (`trainer.lr=inf` is a config error, not NaN weights)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class RelativeToFile:
    """Marks a path in a data-set file: a relative value there means relative to the
    folder of the YAML file that states it (a user's config folder travels with its data),
    not to wherever mtlrec happens to be started."""


#: A file, folder or glob named in a data-set YAML file (see `RelativeToFile`).
FilePath = Annotated[str, RelativeToFile()]
