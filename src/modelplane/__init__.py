"""modelplane: turn trained models into secure, monitored inference services."""

from modelplane.client import Client
from modelplane.errors import (
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    ModelplaneError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
    UnsupportedModel,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Conflict",
    "DeadlineExceeded",
    "InvalidInput",
    "ModelplaneError",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedModel",
    "__version__",
]
