"""The CLI never shows a user a traceback: bad input is a one-line error with an exit code, and
an unexpected error is one line too unless MODELPLANE_DEBUG asks for the traceback."""

import sys

import pytest

from modelplane.cli.main import main
from modelplane.client import Client


def boom(*_: object, **__: object) -> None:
    raise RuntimeError("boom")


def run(monkeypatch: pytest.MonkeyPatch, *argv: str) -> int:
    monkeypatch.setattr(sys, "argv", ["modelplane", *argv])
    with pytest.raises(SystemExit) as exited:
        main()
    return int(exited.value.code or 0)


def test_an_unexpected_error_is_one_line_and_exit_1(monkeypatch, capsys) -> None:
    monkeypatch.delenv("MODELPLANE_DEBUG", raising=False)
    monkeypatch.setattr(Client, "models", boom)
    assert run(monkeypatch, "models", "list") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "error: unexpected RuntimeError: boom" in err
    assert "MODELPLANE_DEBUG=1" in err


def test_modelplane_debug_shows_the_traceback(monkeypatch) -> None:
    monkeypatch.setenv("MODELPLANE_DEBUG", "1")
    monkeypatch.setattr(Client, "models", boom)
    monkeypatch.setattr(sys, "argv", ["modelplane", "models", "list"])
    with pytest.raises(RuntimeError, match="boom"):
        main()


def test_a_non_numeric_input_is_a_clear_error_not_a_traceback(monkeypatch, capsys) -> None:
    signature = {"inputs": [{"name": "float_input", "datatype": "FP32", "shape": [-1, 4]}]}
    monkeypatch.setattr(Client, "metadata", lambda *_: signature)
    code = run(monkeypatch, "predict", "iris", "--input", '{"float_input": [["a", 3.5, 1.4, 0.2]]}')
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert "error: input 'float_input': cannot be read as a FP32 tensor" in err


def test_an_odd_debug_value_or_markup_in_the_error_still_gives_one_line(monkeypatch, capsys):
    monkeypatch.setenv("MODELPLANE_DEBUG", "2")  # not a boolean: read as off, never a crash

    def markup(*_: object, **__: object) -> None:
        raise RuntimeError("bad [/x] tag [red]")

    monkeypatch.setattr(Client, "models", markup)
    assert run(monkeypatch, "models", "list") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "unexpected RuntimeError: bad [/x] tag [red]" in err
