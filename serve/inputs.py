"""What every served app does with untrusted request bodies: the field types and the safe JSON answer.

Pydantic and Starlette only (no Ray), so a family's endpoint module imports it.

- ``Text``: a JSON string that is Unicode text. JSON's ``\\ud800`` escapes can carry lone surrogates,
  which Python's parser accepts and every tokenizer (and UTF-8 encoder) refuses; such a string is
  a validation error naming its field, never a 500 from deep in the model.
- ``Seed``: an integer seed within int64, as torch's generators take it.
- ``SafeJSONResponse``: JSON escaped to ASCII, so an error that echoes a client's input (pydantic's
  ``input``) can always be encoded (Starlette's ``JSONResponse`` encodes UTF-8 and fails on a surrogate).
- ``validation_errors``: pydantic's errors for a 4xx body, with every value JSON can carry.
"""

# No `from __future__ import annotations`: pydantic resolves Annotated types at class definition.
import json
import math
from typing import Annotated, Any

from fastapi.encoders import jsonable_encoder
from pydantic import AfterValidator, Field, StrictStr
from starlette.responses import JSONResponse

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def unicode_text(value: str) -> str:
    """``value`` if it is Unicode text (encodes to UTF-8); ValueError naming the first lone surrogate."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"not Unicode text: a lone surrogate U+{ord(value[exc.start]):04X} at character "
                         f"{exc.start}") from None
    return value


Text = Annotated[StrictStr, AfterValidator(unicode_text)]
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX, description="Seeds the sampler; within int64.")]


class SafeJSONResponse(JSONResponse):
    """A JSON response escaped to ASCII: any ``str``, lone surrogates included, can be sent."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def validation_errors(errors: Any) -> Any:
    """Pydantic's ``errors()`` as plain JSON values: a non-finite float in ``input`` (JSON has none)
    becomes its name, ``"nan"`` or ``"inf"``."""

    def finite(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, list):
            return [finite(v) for v in value]
        return value

    return finite(jsonable_encoder(errors))
