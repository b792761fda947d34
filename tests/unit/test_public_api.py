import modelplane
from modelplane import errors


def test_public_api_is_curated() -> None:
    assert sorted(modelplane.__all__) == sorted(
        [
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
    )
    for name in modelplane.__all__:
        assert hasattr(modelplane, name)


def test_every_error_the_client_raises_is_public() -> None:
    # the client turns each HTTP status into one of these: users must be able to catch each
    raised = {cls.__name__ for cls in errors.STATUS_ERRORS.values()}
    assert raised <= set(modelplane.__all__)


def test_errors_carry_code_and_status() -> None:
    assert modelplane.NotFound("x").status == 404
    assert modelplane.Conflict("x").code == "conflict"
    assert modelplane.Overloaded("x").status == 429
