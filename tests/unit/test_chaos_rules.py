"""The fault-injection rules' syntax (maillab_common.chaos): good and bad rules, positions, canonical text, reserved."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from maillab_common.chaos import (
    MATCHABLE,
    MAX_DELAY_MS,
    STAGES,
    ChaosSyntaxError,
    Rule,
    parse_rules,
    render_rules,
    reserved_reply,
)
from maillab_server.chaos_cli import pointed


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("rcpt reply=451 to=*@flaky.test times=2", Rule("rcpt", "reply", code=451, to="*@flaky.test", times=2)),
        (
            "data-end reply=452:4.3.1 p=0.1 seed=7",
            Rule("data-end", "reply", code=452, text="4.3.1", probability=0.1, seed=7),
        ),
        (
            'mail reply="550:5.7.1 go away" from=*@Spam.test',
            Rule("mail", "reply", code=550, text="5.7.1 go away", sender="*@spam.test"),
        ),
        ("connect delay=200", Rule("connect", "delay", delay_ms=200)),
        ("DATA disconnect every=3", Rule("data", "disconnect", every=3)),
        ("data-end after-store-disconnect p=0.05", Rule("data-end", "after-store-disconnect", probability=0.05)),
        ("helo reply=421", Rule("helo", "reply", code=421)),
        ("auth reply=454:4.7.0", Rule("auth", "reply", code=454, text="4.7.0")),
        ("rcpt times=1 to=a@b.test reply=550", Rule("rcpt", "reply", code=550, to="a@b.test", times=1)),
    ],
)
def test_a_good_rule_parses_and_reads_back_from_its_canonical_text(text: str, rule: Rule) -> None:
    assert parse_rules(text) == (rule,)
    assert parse_rules(str(rule)) == (rule,)


def test_rules_are_separated_by_semicolons_and_blank_ones_are_nothing() -> None:
    rules = parse_rules(" ;rcpt reply=451 to=*@flaky.test times=2;;  data-end reply=452:4.3.1 p=0.1 seed=7 ; ")
    assert [rule.stage for rule in rules] == ["rcpt", "data-end"]
    assert parse_rules(render_rules(rules)) == rules
    assert parse_rules("") == parse_rules("  ;  ") == ()


@pytest.mark.parametrize(
    ("text", "rule", "position", "reason"),
    [
        ("rcpt", 1, 1, "has no action"),
        ("rcpt reply=451; bogus reply=451", 2, 17, "'bogus' is not a stage"),
        ("rcpt reply=45", 1, 12, "4xx or 5xx code"),
        ("rcpt reply=200", 1, 12, "4xx or 5xx code"),
        ("rcpt reply=451:", 1, 12, "no text after its colon"),
        ('rcpt reply="451:x', 1, 12, "without its closing quote"),
        ('rcpt reply=451 to="a""b"', 1, 22, "a second quote right after a quoted value"),
        ('rcpt reply=451 to=a"b"', 1, 20, "a quote inside a term"),
        ('rcpt reply=451 to="a;b"', 1, 19, "without blanks, ; or quotes"),
        ('rcpt reply=451 to="a b"', 1, 19, "without blanks, ; or quotes"),
        ("mail reply=451 to=*@x", 1, 16, "to= cannot match at mail"),
        ("connect disconnect to=*@x", 1, 20, "to= cannot match at connect"),
        ("rcpt reply=451 disconnect", 1, 16, "one action"),
        ("rcpt after-store-disconnect", 1, 6, "data-end only"),
        ("rcpt reply=451 seed=3", 1, 16, "seed= goes with p="),
        ("rcpt reply=451 p=1.5", 1, 18, "probability from 0 to 1"),
        ("data-end delay=0", 1, 16, "milliseconds"),
        ("rcpt reply=451 times=2 every=3", 1, 24, "one trigger"),
        ("rcpt reply=451 to=", 1, 19, "a glob over addresses"),
        ("rcpt reply=451 x=1", 1, 16, "'x' is not a term"),
        ("rcpt reply=451 \x1b[31m", 1, 16, "'\\x1b[31m' is not a term"),
        (";;rcpt reply=451 ;  ; data reply=554 every=0", 2, 44, "every= takes a number"),
    ],
)
def test_a_bad_rule_is_named_with_its_number_and_position(text: str, rule: int, position: int, reason: str) -> None:
    with pytest.raises(ChaosSyntaxError) as raised:
        parse_rules(text)
    assert (raised.value.rule, raised.value.position) == (rule, position)
    assert reason in raised.value.reason
    assert str(raised.value).startswith(f"rule {rule}, at character {position}: ")


@pytest.mark.parametrize(
    ("address", "reserved"),
    [
        ("rcpt-451@anything.test", ("rcpt", 451)),
        ("RCPT-550@x.test", ("rcpt", 550)),
        ("data-451@x.test", ("data-end", 451)),
        ("data-554@x.test", ("data-end", 554)),
        ("rcpt-250@x.test", None),
        ("rcpt-4511@x.test", None),
        ("xrcpt-451@x.test", None),
        ("rcpt-451", None),
        ("user@rcpt-451.test", None),
    ],
)
def test_reserved_addresses_name_their_reply(address: str, reserved: tuple[str, int] | None) -> None:
    assert reserved_reply(address) == reserved


def test_a_match_is_a_glob_over_lower_case_addresses() -> None:
    [rule] = parse_rules("rcpt reply=451 to=*@Flaky.test from=boss@*")
    assert rule.matches("Boss@corp.test", ("a@FLAKY.test",))
    assert not rule.matches("boss@corp.test", ("a@steady.test",))
    assert not rule.matches(None, ("a@flaky.test",))
    [data] = parse_rules("data reply=451 to=*@flaky.test")
    assert data.matches("x@y.test", ("a@steady.test", "b@flaky.test")), "any recipient"


# -- the canonical text reads back: str(rule) is what `chaos show` prints and the /chaos form holds --

# Printable, without blanks, `;` or quotes: any letter, mark, number, punctuation or symbol.
_GLOB = st.text(
    st.characters(whitelist_categories=("L", "M", "N", "P", "S"), blacklist_characters=';"'), min_size=1, max_size=12
)


@st.composite
def rule_texts(draw: st.DrawFn) -> str:
    """A rule's text from the grammar: its terms in any order, in any case, values bare or quoted."""
    stage = draw(st.sampled_from(STAGES))
    actions = [
        st.builds(lambda c: f"reply={c}", st.integers(400, 599)),
        st.builds(
            lambda c, t: f'reply="{c}:{t}"',
            st.integers(400, 599),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E, blacklist_characters='"'), min_size=1),
        ),
        st.just("disconnect"),
        st.builds(lambda ms: f"delay={ms}", st.integers(1, MAX_DELAY_MS)),
    ]
    if stage == "data-end":
        actions.append(st.just("after-store-disconnect"))
    terms = [draw(st.one_of(actions))]
    for key in MATCHABLE[stage]:
        if draw(st.booleans()):
            glob = draw(_GLOB)
            terms.append(f'{key}="{glob}"' if draw(st.booleans()) else f"{key}={glob}")
    trigger = draw(st.sampled_from(["", "p", "times", "every"]))
    if trigger == "p":
        p = draw(st.floats(0.0, 1.0))
        terms.append("p=" + draw(st.sampled_from([repr(p), f"{p:.17f}", f"{p:e}", f"{p:g}"])))
        if draw(st.booleans()):
            terms.append(f"seed={draw(st.integers(0, 2**63 - 1))}")
    elif trigger:
        terms.append(f"{trigger}={draw(st.integers(1, 2**31 - 1))}")
    order = draw(st.permutations(terms))
    return " ".join([stage.upper() if draw(st.booleans()) else stage, *order])


@given(st.lists(rule_texts(), max_size=4))
def test_any_rule_reads_back_equal_from_its_canonical_text(texts: list[str]) -> None:
    rules = parse_rules("; ".join(texts))
    assert len(rules) == len(texts)
    for rule in rules:
        assert parse_rules(str(rule)) == (rule,)
    assert parse_rules(render_rules(rules)) == rules


@given(st.text(st.sampled_from(list('rcpt reply=451:x "; to=*@a.test p=0.5 seed=1 times=2 data-end'))))
def test_whatever_text_parses_reads_back_equal(text: str) -> None:
    try:
        rules = parse_rules(text)
    except ChaosSyntaxError:
        return
    assert parse_rules(render_rules(rules)) == rules


def test_a_probability_reads_back_exactly() -> None:
    [rule] = parse_rules("rcpt reply=451 p=0.123456789")
    assert str(rule) == "rcpt reply=451 p=0.123456789"


def test_the_cli_caret_stands_under_the_bad_term_after_wide_characters() -> None:
    text = "rcpt reply=451 to=日本@😀.test x=1"
    with pytest.raises(ChaosSyntaxError) as raised:
        parse_rules(text)
    line, caret = pointed(text, raised.value.position)
    assert line == f"  {text}"
    # Columns: "  rcpt reply=451 to=" 20, 日本 4, "@" 1, 😀 2, ".test " 6: a terminal shows x at column 33.
    assert caret == " " * 33 + "^"
