"""Where documents go and what the server is: index names and patterns (``{YYYY.MM.DD}``, ``{namespace}``,
``{cluster}``), the index template with our mappings for each server version, and the version read from
the ``GET /`` banner."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson

from eventrouter import Event, SinkConfigError

from ._bulk import REF_ORDER

Version = tuple[str, int, int]  # (distribution, major, minor)

INDEX_FORBIDDEN = re.compile(r'[\\/*?"<>| ,#:A-Z]')
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
DATE_TOKEN = re.compile(r"YYYY|MM|DD|HH")
DATE_FORMAT = re.compile(r"^(?:YYYY|MM|DD|HH)(?:[._-]?(?:YYYY|MM|DD|HH))*$")


def check_index_name(sink: str, name: str, option: str) -> None:
    if not name or INDEX_FORBIDDEN.search(name) or name[0] in "-_+" or name in (".", ".."):
        raise SinkConfigError(sink, f"{name!r} is not a valid index name: lowercase, no spaces and none "
                              'of \\ / * ? " < > | , # : and not starting with - _ +', option)


def parse_index(sink: str, index: str, use_namespace: bool) -> tuple[str, str]:
    """``index`` as a str.format pattern over date, namespace and cluster, and the pattern for events
    without a namespace when it differs (kube-eventer's use_namespace), else ``""``."""
    if "{" not in index:
        check_index_name(sink, index, "index")
        # kube-eventer: <index>-<ns>-<date> with use_namespace, <index>-<date> when ns is empty
        return index + ("-{namespace}" if use_namespace else "") + "-{date:YYYY.MM.DD}", index + "-{date:YYYY.MM.DD}"
    parts, last = [], 0
    for match in PLACEHOLDER.finditer(index):
        literal = index[last:match.start()]
        parts.append(literal.replace("{", "{{").replace("}", "}}"))
        token = match.group(1)
        if token in ("namespace", "cluster"):
            parts.append("{" + token + "}")
        elif DATE_FORMAT.match(token):
            parts.append("{date:" + token + "}")
        elif token:
            raise SinkConfigError(sink, f"unknown placeholder {{{token}}} in the index pattern; use "
                                  "{YYYY.MM.DD} (any of YYYY MM DD HH), {namespace}, {cluster} or {}", "index")
        last = match.end()
    parts.append(index[last:])
    pattern = "".join(parts)
    check_index_name(sink, re.sub(r"\{[^{}]*\}", "x", pattern) or "x", "index")
    return pattern, ""


def template_target(data_stream: str, index: str) -> tuple[str, str]:
    """(template name, index pattern) for the indices written with the ``index`` pattern, or the data stream."""
    if data_stream:
        return data_stream, data_stream
    prefix = index.split("{", 1)[0].rstrip("-_.") or "eventrouter"
    return prefix, index.split("{", 1)[0] + "*"


def typed(version: Version) -> bool:
    """Elasticsearch 5 and 6 need a mapping type; 7+ and OpenSearch take none."""
    dist, major, _ = version
    return dist == "elasticsearch" and major <= 6


def template_request(version: Version, fmt: str, data_stream: str, index: str,
                     doc_type: str, alias: str = "") -> tuple[str, dict[str, Any]]:
    """The PUT path and body of the index template, for this server version; ``alias``: every new
    index gets it (kube-eventer's ``<index>-events``)."""
    dist, major, minor = version
    name, pattern = template_target(data_stream, index)
    props = mappings(fmt, bool(data_stream))
    aliases: dict[str, Any] = {"aliases": {alias: {}}} if alias and not data_stream else {}
    composable = dist == "opensearch" or (major, minor) >= (7, 8)
    if data_stream or composable:
        body: dict[str, Any] = {"index_patterns": [pattern], "priority": 200,
                                "template": {"mappings": props, **aliases}}
        if data_stream:
            body["data_stream"] = {}
        return f"/_index_template/{name}", body
    if typed(version):
        props = {doc_type: props}
    if major <= 5 and dist == "elasticsearch":
        return f"/_template/{name}", {"template": pattern, "order": 1, "mappings": props, **aliases}
    return f"/_template/{name}", {"index_patterns": [pattern], "order": 1, "mappings": props, **aliases}


def parse_banner(body: bytes) -> Version | None:
    """(distribution, major, minor) from the ``GET /`` answer, or None when it holds no version."""
    try:
        version = orjson.loads(body)["version"]
        distribution = version.get("distribution", "elasticsearch")
        major, minor = (int(x) for x in str(version["number"]).split(".")[:2])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return ("opensearch" if distribution == "opensearch" else "elasticsearch", major, minor)


def check_ver(value: int) -> str | None:
    if value not in (5, 6, 7, 8, 9):
        return (f"version {value} is not supported; use 5, 6, 7, 8 or 9, or leave ver out to detect it "
                "(OpenSearch: leave it out)")
    return None


def mappings(fmt: str, data_stream: bool) -> dict[str, Any]:
    """Mappings for the fields we write: keyword for identifiers, date for times, text for the message."""
    kw = {"type": "keyword"}
    date = {"type": "date"}
    message = {"type": "text", "fields": {"keyword": {"type": "keyword", "ignore_above": 1024}}}
    if fmt == "kube-eventer":
        ref = {k: kw for k in REF_ORDER}
        props: dict[str, Any] = {
            "Count": {"type": "long"},
            "Metadata": {"properties": {"name": kw, "namespace": kw, "uid": kw, "resourceVersion": kw,
                                        "creationTimestamp": date}},
            "InvolvedObject": {"properties": ref},
            "Source": {"properties": {"component": kw, "host": kw}},
            "FirstOccurrenceTimestamp": date,
            "LastOccurrenceTimestamp": date,
            "Message": message,
            "Reason": kw,
            "Type": kw,
            "EventTags": {"properties": {k: kw for k in ("cluster_name", "eventID", "hostname", "pod_id",
                                                            "pod_name")}},
        }
    else:
        props = {k: kw for k in ("uid", "resource_version", "cluster", "namespace", "name", "type", "reason")}
        props.update(message=message, count={"type": "long"}, first_timestamp=date, last_timestamp=date)
        props["involved_object"] = {"properties": {k: kw for k in ("kind", "namespace", "name", "uid",
                                                                    "api_version", "field_path")}}
        props.update({k: kw for k in ("source_component", "source_host", "reporting_controller",
                                      "reporting_instance", "action")})
    if data_stream:
        props = {"@timestamp": date, **props}
    strings = {"strings": {"match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 1024}}}
    return {"dynamic_templates": [strings], "properties": props}


class IndexFields(dict):  # type: ignore[type-arg]
    """Fields of the index pattern for one event; the date is the event's last time in UTC."""

    def __init__(self, event: Event, cluster: str) -> None:
        super().__init__(namespace=event.namespace, cluster=cluster.lower(),
                         date=IndexDate(event.last_timestamp.astimezone(UTC)))


class IndexDate:
    def __init__(self, when: datetime) -> None:
        self.when = when

    def __format__(self, spec: str) -> str:
        values = {"YYYY": f"{self.when.year:04d}", "MM": f"{self.when.month:02d}", "DD": f"{self.when.day:02d}",
                  "HH": f"{self.when.hour:02d}"}
        return DATE_TOKEN.sub(lambda m: values[m.group(0)], spec)
