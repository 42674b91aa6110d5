"""User-facing errors of the runtime (torch-free).

Every error a caller can fix is a `RuntimeUserError` (a `recblr.errors.RecblrError`), so the
CLI prints it as one line and exits 2, and the server turns it into a JSON error whose HTTP
status is `status` and whose `code` names it. A subclass states both in its class line:
`class Conflict(RuntimeUserError, status=503, code="conflict")`.
"""

from __future__ import annotations

from recblr.errors import RecblrError


class RuntimeUserError(RecblrError):
    """A problem with the caller's input; `status` is the HTTP code the server answers."""

    status = 400
    code = "bad_request"

    def __init_subclass__(cls, status: int | None = None, code: str | None = None, **kw):
        super().__init_subclass__(**kw)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class CellError(RuntimeUserError, status=500, code="bad_cell"):
    """The ONNX cell cannot be used (missing file, missing metadata, other format version)."""


class NonFiniteOutput(RuntimeUserError, status=500, code="non_finite"):
    """The cell answered NaN or infinity for a user: a broken stored state or broken weights."""


class CorruptState(RuntimeUserError, status=500, code="corrupt_state"):
    """A user's stored record cannot be read by this cell (wrong length, undecodable bytes)."""


class BadEvent(RuntimeUserError, status=422, code="invalid"):
    """A well-formed request whose content is invalid (missing field, wrong type, too long)."""


class UnknownItem(BadEvent, code="unknown_item"):
    """An item id the cell's vocabulary does not hold."""


class UnknownUser(RuntimeUserError, status=404, code="unknown_user"):
    """No usable record for the user."""


class TooLarge(RuntimeUserError, status=413, code="too_large"):
    """A body, a line or a request over its limit."""


class BodyTimeout(RuntimeUserError, status=408, code="body_timeout"):
    """The client stopped sending its request body."""


class Conflict(RuntimeUserError, status=503, code="conflict"):
    """Another writer kept changing the user's record; nothing was applied, retry later."""


class ClientGone(Exception):
    """The client disconnected before its request body was complete: nothing is applied."""
