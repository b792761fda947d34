import modelplane


def test_public_api_is_curated() -> None:
    assert sorted(modelplane.__all__) == sorted(
        [
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
    )
    for name in modelplane.__all__:
        assert hasattr(modelplane, name)


def test_errors_carry_code_and_status() -> None:
    assert modelplane.NotFound("x").status == 404
    assert modelplane.Conflict("x").code == "conflict"
