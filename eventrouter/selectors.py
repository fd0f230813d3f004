"""Kubernetes label selectors (``kubectl -l`` syntax), matched against an enriched event's labels.

Grammar (k8s.io/apimachinery/pkg/labels): requirements separated by commas, all of which must hold::

    team=payments   team==payments   team!=payments   team   !team
    team in (payments,checkout)      team notin (qa)

``!=`` and ``notin`` also match when the label is missing, as in Kubernetes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"^\s*({_KEY})\s+(in|notin)\s*\(\s*([^()]*)\)\s*$")
_EQ = re.compile(rf"^\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*$")
_EXISTS = re.compile(rf"^\s*(!?)\s*({_KEY})\s*$")
_VALUE_ONLY = re.compile(rf"^{_VALUE}$")

Requirement = Callable[[Mapping[str, str]], bool]


class SelectorError(ValueError):
    pass


def _split(text: str) -> list[str]:
    """Top-level comma split: the commas inside ``in (a,b)`` stay."""
    parts: list[str] = []
    current: list[str] = []
    depth = 0
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError("')' without '('")
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    if depth:
        raise SelectorError("'(' without ')'")
    parts.append("".join(current))
    return parts


def _requirement(text: str) -> Requirement:
    match = _SET.match(text)
    if match:
        key, op, listed = match.groups()
        values = frozenset(v.strip() for v in listed.split(","))
        if not all(_VALUE_ONLY.match(v) for v in values) or values == {""}:
            raise SelectorError(f"{text.strip()!r}: the values in (...) must be label values")
        if op == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    match = _EQ.match(text)
    if match:
        key, op, value = match.groups()
        if op == "!=":
            return lambda labels: labels.get(key) != value
        return lambda labels: labels.get(key) == value
    match = _EXISTS.match(text)
    if match:
        negated, key = match.groups()
        if negated:
            return lambda labels: key not in labels
        return lambda labels: key in labels
    raise SelectorError(f"{text.strip()!r} is not a requirement; use key=value, key!=value, key in (a,b), "
                        "key notin (a,b), key or !key")


class LabelSelector:
    """A compiled selector; ``matches(labels)`` is True when every requirement holds."""

    __slots__ = ("_requirements", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        if not text.strip():
            raise SelectorError("empty selector")
        self._requirements = tuple(_requirement(part) for part in _split(text))

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(requirement(labels) for requirement in self._requirements)

    def __repr__(self) -> str:
        return f"LabelSelector({self.text!r})"
