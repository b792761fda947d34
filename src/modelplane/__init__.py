"""modelplane: turn trained models into secure, monitored inference services."""

from typing import TYPE_CHECKING, Any

from modelplane.errors import (
    Conflict,
    DeadlineExceeded,
    InvalidInput,
    ModelplaneError,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PermissionDenied,
    StorageFull,
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
    "StorageFull",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedModel",
    "__version__",
]

if TYPE_CHECKING:
    from modelplane.client import Client


def __getattr__(name: str) -> Any:
    # the SDK client (and httpx under it) loads on first use: a replica, which imports this
    # package but never the client, is about 10 MB smaller without them
    if name == "Client":
        from modelplane.client import Client

        return Client
    raise AttributeError(f"module 'modelplane' has no attribute {name!r}")
