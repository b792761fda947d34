"""The CLI's one-line errors."""

from __future__ import annotations

import pytest
import typer

from modelplane.cli.output import handled
from modelplane.errors import UnsupportedModel


def test_an_error_is_printed_as_written_brackets_included(
    capsys: pytest.CaptureFixture[str],
) -> None:
    message = "pushing a PyTorch model needs the torch extra: pip install 'modelplane[torch]'"
    with pytest.raises(typer.Exit) as caught, handled():
        raise UnsupportedModel(message)
    assert caught.value.exit_code == 2
    assert " ".join(capsys.readouterr().err.split()) == f"error: {message}"
