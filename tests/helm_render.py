"""A small renderer for the Go-template subset the Helm chart uses (``helm`` is not installable here).

Supported: ``{{- -}}`` trimming, comments, ``define``/``include``, ``if``/``else``/``else if``,
``with``, ``range`` (lists, and maps with ``$k, $v :=``), pipelines, parenthesized calls, and the
functions ``default quote printf trunc trimSuffix contains toYaml indent nindent and or not len eq``.
Anything else raises, so the chart cannot silently use a construct this renderer misreads.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|\(|\)|\||:=|,|[^\s()|,]+)')


class TemplateError(Exception):
    pass


# ---- parsing: text and actions into a tree ------------------------------------------------------
def _lex(source: str) -> list[tuple[str, str]]:
    """[('text', ...), ('action', ...)] with the trim markers applied to the neighbouring text."""
    items: list[tuple[str, str]] = []
    pos = 0
    trim_next = False
    for match in _ACTION.finditer(source):
        text = source[pos : match.start()]
        if trim_next:
            text = text.lstrip()
        if match.group(1):
            text = text.rstrip()
        items.append(("text", text))
        body = match.group(2).strip()
        if not (body.startswith("/*") and body.endswith("*/")):
            items.append(("action", body))
        trim_next = bool(match.group(3))
        pos = match.end()
    tail = source[pos:]
    items.append(("text", tail.lstrip() if trim_next else tail))
    return items


def _parse(items: list[tuple[str, str]], i: int = 0, until: tuple[str, ...] = ()) -> tuple[list[Any], int, str]:
    nodes: list[Any] = []
    while i < len(items):
        kind, value = items[i]
        i += 1
        if kind == "text":
            if value:
                nodes.append(("text", value))
            continue
        word = value.split(None, 1)[0] if value else ""
        rest = value[len(word) :].strip()
        if word in ("end", "else"):
            if word not in until:
                raise TemplateError(f"unexpected {{{{ {value} }}}}")
            return nodes, i, value
        if word in ("if", "with", "range", "define"):
            node, i = _block(items, i, word, rest)
            nodes.append(node)
        else:
            nodes.append(("expr", value))
    if until:
        raise TemplateError("missing {{ end }}")
    return nodes, i, ""


def _block(items: list[tuple[str, str]], i: int, word: str, rest: str) -> tuple[Any, int]:
    """(word, header, body, else-body); ``else if X`` becomes an ``if`` node inside the else-body."""
    body, i, closer = _parse(items, i, ("end", "else"))
    otherwise: list[Any] = []
    if closer.startswith("else if "):
        nested, i = _block(items, i, "if", closer[len("else if ") :].strip())
        otherwise = [nested]
    elif closer == "else":
        otherwise, i, _ = _parse(items, i, ("end",))
    return (word, rest, body, otherwise), i


# ---- evaluation -----------------------------------------------------------------------------
def _truthy(value: Any) -> bool:
    return value not in (None, False, 0, "", [], {}) and value == value


def _to_yaml(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=False, sort_keys=True).rstrip("\n")


def _indent(n: int, text: str) -> str:
    return "\n".join(" " * n + line for line in str(text).split("\n"))


FUNCTIONS = {
    "default": lambda fallback, value=None: value if _truthy(value) else fallback,
    "quote": lambda value: json.dumps("" if value is None else str(value)),
    "printf": lambda fmt, *args: re.sub(r"%[sdv]", "%s", fmt) % tuple(_str(a) for a in args),
    "trunc": lambda n, text: str(text)[:n],
    "trimSuffix": lambda suffix, text: str(text)[: -len(suffix)] if suffix and str(text).endswith(suffix) else text,
    "contains": lambda sub, text: sub in str(text),
    "toYaml": _to_yaml,
    "indent": _indent,
    "nindent": lambda n, text: "\n" + _indent(n, text),
    "and": lambda *args: next((a for a in args if not _truthy(a)), args[-1]),
    "or": lambda *args: next((a for a in args if _truthy(a)), args[-1]),
    "not": lambda value: not _truthy(value),
    "len": len,
    "eq": lambda a, b: a == b,
}


def _str(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


class Renderer:
    def __init__(self, chart_dir: Path) -> None:
        self.chart_dir = chart_dir
        self.defines: dict[str, list[Any]] = {}

    def render_chart(
        self,
        values: dict[str, Any],
        release: str = "eventrouter",
        namespace: str = "eventrouter",
    ) -> dict[str, str]:
        chart = yaml.safe_load((self.chart_dir / "Chart.yaml").read_text())
        root = {
            "Values": values,
            "Release": {"Name": release, "Namespace": namespace, "Service": "Helm"},
            "Chart": {"Name": chart["name"], "Version": chart["version"], "AppVersion": chart.get("appVersion")},
        }
        templates = sorted((self.chart_dir / "templates").iterdir())
        trees = {}
        for path in templates:
            nodes, _, _ = _parse(_lex(path.read_text()))
            trees[path.name] = nodes
            self._collect_defines(nodes)
        return {
            name: self._render(nodes, root, {"$": root}) for name, nodes in trees.items() if not name.startswith("_")
        }

    def _collect_defines(self, nodes: list[Any]) -> None:
        for node in nodes:
            if node[0] == "define":
                self.defines[json.loads(node[1])] = node[2]

    def _render(self, nodes: list[Any], dot: Any, variables: dict[str, Any]) -> str:
        out: list[str] = []
        for node in nodes:
            kind = node[0]
            if kind == "text":
                out.append(node[1])
            elif kind == "expr":
                out.append(_str(self._pipeline(node[1], dot, variables)))
            elif kind == "define":
                continue
            elif kind == "if":
                branch = node[2] if _truthy(self._pipeline(node[1], dot, variables)) else node[3]
                out.append(self._render(branch, dot, variables))
            elif kind == "with":
                value = self._pipeline(node[1], dot, variables)
                out.append(
                    self._render(node[2], value, variables) if _truthy(value) else self._render(node[3], dot, variables)
                )
            elif kind == "range":
                out.append(self._range(node, dot, variables))
        return "".join(out)

    def _range(self, node: Any, dot: Any, variables: dict[str, Any]) -> str:
        header = node[1]
        names: list[str] = []
        if ":=" in header:
            left, header = header.split(":=", 1)
            names = [n.strip() for n in left.split(",")]
        collection = self._pipeline(header.strip(), dot, variables)
        if not _truthy(collection):
            return self._render(node[3], dot, variables)
        pairs = sorted(collection.items()) if isinstance(collection, dict) else list(enumerate(collection))
        out = []
        for key, value in pairs:
            scope = dict(variables)
            if len(names) == 2:
                scope[names[0]], scope[names[1]] = key, value
            elif len(names) == 1:
                scope[names[0]] = value
            out.append(self._render(node[2], value, scope))
        return "".join(out)

    # ---- pipelines ----------------------------------------------------------------------------
    def _pipeline(self, text: str, dot: Any, variables: dict[str, Any]) -> Any:
        tokens = [t for t in _TOKEN.findall(text) if t]
        value, rest = self._parse_pipeline(tokens, dot, variables)
        if rest:
            raise TemplateError(f"cannot read {text!r}")
        return value

    def _parse_pipeline(self, tokens: list[str], dot: Any, variables: dict[str, Any]) -> tuple[Any, list[str]]:
        value: Any = _NOTHING
        while True:
            command: list[str | tuple[str, Any]] = []
            while tokens and tokens[0] not in ("|", ")"):
                token = tokens.pop(0)
                if token == "(":
                    inner, tokens = self._parse_pipeline(tokens, dot, variables)
                    if not tokens or tokens.pop(0) != ")":
                        raise TemplateError("unbalanced parentheses")
                    command.append(("value", inner))
                else:
                    command.append(token)
            value = self._call(command, dot, variables, value)
            if tokens and tokens[0] == "|":
                tokens.pop(0)
                continue
            return value, tokens

    def _call(self, command: list[Any], dot: Any, variables: dict[str, Any], piped: Any) -> Any:
        if not command:
            raise TemplateError("empty command")
        head, args = command[0], command[1:]
        values = [self._operand(a, dot, variables) for a in args]
        if piped is not _NOTHING:
            values.append(piped)
        if isinstance(head, str) and head == "include":
            name, context = values
            return self._render(self.defines[name], context, {"$": variables["$"]})
        if isinstance(head, str) and head in FUNCTIONS:
            return FUNCTIONS[head](*values)
        if isinstance(head, str) and re.fullmatch(r"[a-zA-Z]\w*", head):
            raise TemplateError(f"function {head!r} is not supported by this renderer")
        if values:
            raise TemplateError(f"{head!r} is not a function")
        return self._operand(head, dot, variables)

    def _operand(self, token: Any, dot: Any, variables: dict[str, Any]) -> Any:
        if isinstance(token, tuple):
            return token[1]
        if token.startswith('"'):
            return json.loads(token)
        if re.fullmatch(r"-?\d+", token):
            return int(token)
        if token in ("true", "false"):
            return token == "true"
        if token == ".":
            return dot
        if token.startswith("$"):
            name, _, path = token.partition(".")
            return _lookup(variables[name], path)
        if token.startswith("."):
            return _lookup(dot, token[1:])
        raise TemplateError(f"cannot read {token!r}")


_NOTHING = object()


def _lookup(value: Any, path: str) -> Any:
    for part in filter(None, path.split(".")):
        value = value.get(part) if isinstance(value, dict) else None
    return value
