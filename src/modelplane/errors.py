"""One error tree. Each error has a stable ``code`` and an HTTP status; edges map them to
responses. Messages are for users: they say what was wrong and how to fix it, and never carry
paths, stack traces or secrets."""

from __future__ import annotations

import re


class ModelplaneError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(ModelplaneError):
    code = "invalid_argument"
    status = 400


class Unauthenticated(ModelplaneError):
    code = "unauthenticated"
    status = 401


class PermissionDenied(ModelplaneError):
    code = "permission_denied"
    status = 403


class NotFound(ModelplaneError):
    code = "not_found"
    status = 404


class Conflict(ModelplaneError):
    code = "conflict"
    status = 409


class PayloadTooLarge(ModelplaneError):
    code = "payload_too_large"
    status = 413


class StorageFull(ModelplaneError):
    code = "insufficient_storage"
    status = 507


class UnsupportedModel(ModelplaneError):
    code = "unsupported_model"
    status = 422


class Overloaded(ModelplaneError):
    code = "resource_exhausted"
    status = 429


class Unavailable(ModelplaneError):
    code = "unavailable"
    status = 503


class DeadlineExceeded(ModelplaneError):
    code = "deadline_exceeded"
    status = 504


STATUS_ERRORS: dict[int, type[ModelplaneError]] = {
    400: InvalidInput,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    413: PayloadTooLarge,
    422: UnsupportedModel,
    429: Overloaded,
    503: Unavailable,
    504: DeadlineExceeded,
    507: StorageFull,
}


def error_for_status(status: int, message: str) -> ModelplaneError:
    """The error of this tree that an HTTP status stands for."""
    return STATUS_ERRORS.get(status, ModelplaneError)(message)


# an absolute path of two or more parts (not a URL, a relative path or one of our routes)
_PATH = re.compile(r"(?<![\w/:.~-])(?!/(?:api|v2)/)(?:/[^/\s'\"`,;:()\[\]{}<>]+){2,}/?")


def redact_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last part, for messages that pass on what
    a library said (``Load model from /srv/.../model.onnx failed`` -> ``... from model.onnx``)."""
    return _PATH.sub(lambda m: m.group(0).rstrip("/").rsplit("/", 1)[-1], text)
