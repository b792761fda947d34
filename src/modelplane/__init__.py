"""modelplane: turn trained models into secure, monitored inference services."""

from modelplane.client import Client
from modelplane.errors import (
    Conflict,
    InvalidInput,
    ModelplaneError,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

__version__ = "0.1.0"

__all__ = [
    "Client",
    "Conflict",
    "InvalidInput",
    "ModelplaneError",
    "NotFound",
    "PayloadTooLarge",
    "PermissionDenied",
    "Unauthenticated",
    "Unavailable",
    "__version__",
]
