from __future__ import annotations

from asyncgate import preferences


def test_parse_several_headers_case_and_parameters() -> None:
    parsed = preferences.parse(['return=minimal, RESPOND-ASYNC; a=1;b="x,y"', "wait=10"])
    assert [p.name for p in parsed] == ["return", "respond-async", "wait"]
    assert parsed[0].value == "minimal"
    assert parsed[1].params == (("a", "1"), ("b", "x,y"))
    assert parsed[2].value == "10"


def test_quoted_values_may_hold_commas_and_escapes() -> None:
    parsed = preferences.parse(['foo="a, \\"b\\"", bar'])
    assert [(p.name, p.value) for p in parsed] == [("foo", 'a, "b"'), ("bar", None)]


def test_without_removes_only_what_was_honoured() -> None:
    values = ["respond-async, return=minimal", "respond-async", 'x="1,2"']
    assert preferences.without(values, frozenset({"respond-async"})) == ["return=minimal", 'x="1,2"']


def test_empty_elements_are_ignored() -> None:
    assert [p.name for p in preferences.parse([" , ,respond-async,"])] == ["respond-async"]
