"""The fault-injection rules' syntax (maillab_common.chaos): good rules, bad ones and where, reserved addresses."""

from __future__ import annotations

import pytest

from maillab_common.chaos import ChaosSyntaxError, Rule, parse_rules, render_rules, reserved_reply


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
