"""User-facing errors of the runtime (torch-free).

Every error a caller can fix is a `RuntimeUserError` (a `recblr.errors.RecblrError`), so the
CLI prints it as one line and exits 2, and the server turns it into a JSON error whose HTTP
status is `status`.
"""

from __future__ import annotations

from recblr.errors import RecblrError


class RuntimeUserError(RecblrError):
    """A problem with the caller's input; `status` is the HTTP code the server answers."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code

    @property
    def message(self) -> str:
        return str(self)


class CellError(RuntimeUserError):
    """The ONNX cell cannot be used (missing file, missing metadata, other format version)."""

    status = 500
    code = "bad_cell"


class NonFiniteOutput(RuntimeUserError):
    """The cell answered NaN or infinity for a user: a broken stored state or broken weights."""

    status = 500
    code = "non_finite"


class BadEvent(RuntimeUserError):
    """A well-formed request whose content is invalid (missing field, wrong type, too long)."""

    status = 422
    code = "invalid"


class UnknownItem(BadEvent):
    code = "unknown_item"


class UnknownUser(RuntimeUserError):
    status = 404
    code = "unknown_user"


class TooLarge(RuntimeUserError):
    status = 413
    code = "too_large"


class CorruptState(RuntimeUserError):
    """A user's stored record cannot be read by this cell (wrong length, undecodable bytes)."""

    status = 500
    code = "corrupt_state"


class Conflict(RuntimeUserError):
    """Another writer kept changing the user's record; nothing was applied, retry later."""

    status = 503
    code = "conflict"


class BodyTimeout(RuntimeUserError):
    """The client stopped sending its request body."""

    status = 408
    code = "body_timeout"


class ClientGone(Exception):
    """The client disconnected before its request body was complete: nothing is applied."""
