"""The filter language: parsing, Python evaluation, SQL rendering with bound parameters only."""

from __future__ import annotations

import contextlib
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.dialects import postgresql

from ecs.criteria import FieldComparison, ValenceBound, parse_comparison, parse_valence
from ecs.schema import ecs_components, ecs_relationships

ELARA = {
    "health": {"hp": 6.0, "max_hp": 10.0, "condition": None},
    "position": {"location": "7d1c0a9e-0000-0000-0000-000000000000"},
    "oath": {"task": "deliver the Salt Ledger", "fulfilled_day": 4, "sworn": True, "terms": {"days": 3}},
    "mood": "grim",
}


def sql(expression) -> tuple[str, dict]:
    compiled = expression.compile(dialect=postgresql.dialect())
    return str(compiled), compiled.params


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("health.hp<10", FieldComparison("health", ("hp",), "<", 10.0)),
        ("Health.hp <= 6", FieldComparison("health", ("hp",), "<=", 6.0)),
        ("  HEALTH . max_hp >= -1e3 ", FieldComparison("health", ("max_hp",), ">=", -1000.0)),
        ("status.value=dead", FieldComparison("status", ("value",), "=", "dead")),
        ("status.value!=dead", FieldComparison("status", ("value",), "!=", "dead")),
        (
            'oath.task="deliver the Salt Ledger"',
            FieldComparison("oath", ("task",), "=", "deliver the Salt Ledger"),
        ),
        ("oath.task='a = b < c'", FieldComparison("oath", ("task",), "=", "a = b < c")),
        ("oath.sworn=TRUE", FieldComparison("oath", ("sworn",), "=", True)),
        ("oath.sworn!=false", FieldComparison("oath", ("sworn",), "!=", False)),
        ('oath.fulfilled_day="4"', FieldComparison("oath", ("fulfilled_day",), "=", "4")),
        ("oath.terms.days>2", FieldComparison("oath", ("terms", "days"), ">", 2.0)),
        ("mood=grim", FieldComparison("mood", (), "=", "grim")),
        ("hit  points.current>.5", FieldComparison("hit points", ("current",), ">", 0.5)),
    ],
)
def test_parse_comparison(text: str, expected: FieldComparison) -> None:
    assert parse_comparison(text) == expected


@pytest.mark.parametrize(
    ("text", "message_part"),
    [
        ("", "expected a component comparison"),
        ("health.hp", "expected a component comparison"),
        ("<10", "missing component name"),
        (".hp<10", "missing component name"),
        ("health..hp<10", "empty field name"),
        ("health.hp.<10", "empty field name"),
        ("health.hp<", "missing value"),
        ("health.hp<<10", "unexpected '<'"),
        ("health.hp==10", "unexpected '='"),
        ("health.hp=>10", "unexpected '>'"),
        ("health.hp!10", "unknown operator"),
        ("health.hp<>10", "unexpected '>'"),
        ("oath.task='open", "unterminated string"),
        ("oath.task='it's'", "own quote"),
        ("oath.sworn<true", "booleans"),
        ('"health".hp<10', "expected a component comparison"),
        ("health.hp<1e999", "out of range"),
        ("health.hp<\x00", "control characters"),
        ("a." + ".".join("x" * 9) + "=1", "deeper"),
        ("x" * 501 + "=1", "longer than 500"),
    ],
)
def test_invalid_comparisons_raise_value_error(text: str, message_part: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message_part)):
        parse_comparison(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("trust>0.5", ValenceBound("trust", ">", 0.5)),
        ("Trust < -0.5", ValenceBound("trust", "<", -0.5)),
        ("fear>=0", ValenceBound("fear", ">=", 0.0)),
        ("loyal  ty!=1", ValenceBound("loyal ty", "!=", 1.0)),
    ],
)
def test_parse_valence(text: str, expected: ValenceBound) -> None:
    assert parse_valence(text) == expected


@pytest.mark.parametrize(
    ("text", "message_part"),
    [("trust", "expected a valence bound"), (">0.5", "dimension"), ("trust>high", "number"),
     ("trust>true", "number"), ("trust>'0.5'", "number"), ("trust>", "missing value")],
)  # fmt: skip
def test_invalid_valence_bounds_raise_value_error(text: str, message_part: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message_part)):
        parse_valence(text)


@pytest.mark.parametrize(
    ("text", "matches"),
    [
        ("health.hp<10", True),
        ("health.hp<6", False),
        ("health.hp<=6", True),
        ("health.hp=6", True),
        ("health.max_hp!=10", False),
        ("health.condition=null", False),  # null is a bare string here, and condition is JSON null
        ("health.condition!=x", False),  # a missing/null value matches nothing, not even !=
        ("health.missing!=1", False),
        ("oath.fulfilled_day>3", True),  # ints compare as numbers
        ('oath.fulfilled_day="4"', False),  # a string never equals a number
        ("oath.task='deliver the Salt Ledger'", True),
        ("oath.task>deliver", True),  # code point order
        ("oath.sworn=true", True),
        ("oath.sworn=false", False),
        ("oath.terms.days>=3", True),
        ("oath.terms<3", False),  # an object is not a number
        ("mood=grim", True),
        ("mood.x=grim", False),
        ("tags.tags=a", False),  # no such component
        ("HEALTH.hp>5", True),
    ],
)
def test_matches_over_builtins(text: str, matches: bool) -> None:
    assert parse_comparison(text).matches(ELARA) is matches


def test_valence_bound_matches() -> None:
    bound = parse_valence("trust<-0.5")
    assert bound.matches({"trust": -0.8})
    assert not bound.matches({"trust": -0.5})
    assert not bound.matches({"fear": -1.0})  # a missing dimension never matches
    assert parse_valence("trust>=0").matches({"trust": 0.0})


def test_sql_binds_every_value_and_guards_the_casts() -> None:
    text, params = sql(parse_comparison("health.hp<10").condition(ecs_components.c.data))
    assert "jsonb_typeof" in text
    assert "CASE WHEN" in text
    assert "CAST" in text
    assert 10.0 in params.values()
    assert ["hp"] in params.values()
    evil = parse_comparison('x.y="\'; DROP TABLE ecs_entities; --"')
    text, params = sql(evil.condition(ecs_components.c.data))
    assert "DROP" not in text
    assert "'; DROP TABLE ecs_entities; --" in params.values()
    text, params = sql(parse_comparison("oath.task>a").condition(ecs_components.c.data))
    assert 'COLLATE "C"' in text
    text, params = sql(parse_comparison("oath.sworn=true").condition(ecs_components.c.data))
    assert "true" in params.values()
    text, params = sql(parse_valence("trust>0.5").condition(ecs_relationships.c.valence))
    assert "ecs_relationships.valence ->" in text
    assert {"trust", 0.5} <= set(params.values())


def test_str_round_trips() -> None:
    for text in ("health.hp<10", "oath.task='deliver the Salt Ledger'", "oath.sworn=true", "mood!=grim"):
        parsed = parse_comparison(text)
        assert parse_comparison(str(parsed)) == parsed


@given(st.text(max_size=80))
def test_arbitrary_text_raises_nothing_but_value_error(text: str) -> None:
    for parse in (parse_comparison, parse_valence):
        try:
            parsed = parse(text)
        except ValueError:
            continue
        # whatever parses renders to SQL and evaluates without error
        column = ecs_components.c.data if isinstance(parsed, FieldComparison) else ecs_relationships.c.valence
        sql(parsed.condition(column))
        if isinstance(parsed, FieldComparison):
            parsed.matches(ELARA)
        else:
            parsed.matches({"trust": 0.5})


@given(st.text(alphabet=st.characters(categories=["L", "N", "P", "S", "Z"]), max_size=60))
def test_arbitrary_printable_text_raises_nothing_but_value_error(text: str) -> None:
    for parse in (parse_comparison, parse_valence):
        with contextlib.suppress(ValueError):
            parse(text)


_identifier = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=12)
_value = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: (repr(float(f)), float(f))),
    st.booleans().map(lambda b: ("true" if b else "false", b)),
    st.text(alphabet="abcdefghij XYZ", min_size=1, max_size=10)
    .filter(lambda s: s.strip() == s and s not in ("true", "false"))
    .map(lambda s: (f'"{s}"', s)),
)


@given(_identifier, st.lists(_identifier, max_size=3), st.sampled_from(["=", "!="]), _value)
def test_generated_comparisons_parse_exactly(component, path, op, value) -> None:
    raw, expected = value
    parsed = parse_comparison(".".join([component, *path]) + op + raw)
    assert parsed == FieldComparison(component, tuple(path), op, expected)
