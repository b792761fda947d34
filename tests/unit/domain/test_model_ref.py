import pytest

from modelplane.domain import ModelRef, parse_pairs
from modelplane.domain.model import alias_problem, name_problem


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("iris", ModelRef("iris")),
        ("iris:2", ModelRef("iris", version=2)),
        ("iris@production", ModelRef("iris", alias="production")),
    ],
)
def test_parse_accepts_the_three_forms(text: str, expected: ModelRef) -> None:
    assert ModelRef.parse(text) == expected
    assert str(ModelRef.parse(text)) == text


@pytest.mark.parametrize("text", ["", "iris:", "iris:0", "iris:x", "iris@", "@prod", "iris@1"])
def test_parse_rejects_bad_references_with_a_hint(text: str) -> None:
    with pytest.raises(ValueError, match="NAME:VERSION"):
        ModelRef.parse(text)


def test_names_and_aliases_are_checked() -> None:
    assert name_problem("fraud-v2.1") is None
    assert "invalid model name" in (name_problem("../etc") or "")
    assert name_problem("Iris") is not None
    assert alias_problem("production") is None
    assert alias_problem("42") is not None


def test_serving_config_round_trips() -> None:
    from modelplane.domain import ServingConfig

    config = ServingConfig(8, 2.5, (4, 8), 16, 0.25)
    assert ServingConfig.from_dict(config.to_dict()) == config


def test_key_value_pairs_have_one_parser_with_one_rule() -> None:
    # tags (API and CLI push) and node labels (CLI deploy) all go through parse_pairs
    assert parse_pairs(["team=ml", "note=", "a=b=c", "team=fraud"], "tag") == {
        "team": "fraud",
        "note": "",
        "a": "b=c",
    }
    for bad in ("team", "=ml", " =ml"):  # the CLI accepted an empty key before
        with pytest.raises(ValueError, match=rf"invalid tag {bad!r}: use KEY=VALUE"):
            parse_pairs([bad], "tag")
