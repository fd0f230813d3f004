"""kube-eventer's Go-template field references: every field of a v1.Event prints as text/template printed it,
and a reference to a field the struct does not have stops the start (exit 2) naming it."""

from __future__ import annotations

import copy
import subprocess
import sys
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from eventrouter import SinkConfigError
from eventrouter.event import Event
from eventrouter.templates import EventTemplate
from eventrouter.templates_go import go_time
from tests.helpers import make_event, real_objects

# a real core/v1 object (the first BackOff of the recorded set), with the fields real events may carry
BASE = next(o for o in real_objects() if o.get("reason") == "BackOff" and o.get("count", 0) > 1)
FULL = copy.deepcopy(BASE)
FULL["metadata"].update(labels={"tier": "web", "app.kubernetes.io/name": "shop", "a": "1"},
                        annotations={"note": "x"}, generateName="", finalizers=["f1", "f2"],
                        deletionGracePeriodSeconds=30)
FULL["series"] = {"count": 7, "lastObservedTime": "2023-07-10T05:40:00.250000Z", "state": "Ongoing"}
FULL["related"] = {"kind": "Node", "name": "minikube", "uid": "n-1", "apiVersion": "v1"}
FULL["eventTime"] = "2023-07-10T05:31:39.694297Z"


def render(template: str, obj: dict, tz: str | None = None) -> str:  # type: ignore[type-arg]
    zone = ZoneInfo(tz) if tz else UTC
    return EventTemplate("webhook", template, tz=zone).render(Event.from_object(obj))


def test_every_field_of_the_struct_renders():
    meta = FULL["metadata"]
    involved = FULL["involvedObject"]
    cases = {
        "{{ .UID }}": meta["uid"],
        "{{ .ObjectMeta.UID }}": meta["uid"],
        "{{ .Name }}": meta["name"],
        "{{ .ObjectMeta.Name }}": meta["name"],
        "{{ .Namespace }}": meta["namespace"],
        "{{ .ResourceVersion }}": meta["resourceVersion"],
        "{{ .CreationTimestamp }}": "2023-07-09 23:56:01 +0000 UTC",
        "{{ .Labels }}": "map[a:1 app.kubernetes.io/name:shop tier:web]",  # sorted, as fmt prints maps
        "{{ .Labels.tier }}": "web",
        "{{ .Labels.missing }}": "<no value>",
        '{{ index .Labels "app.kubernetes.io/name" }}': "shop",
        "{{ .Annotations }}": "map[note:x]",
        "{{ .Finalizers }}": "[f1 f2]",
        "{{ .OwnerReferences }}": "[]",
        "{{ .DeletionTimestamp }}": "<nil>",
        "{{ .DeletionGracePeriodSeconds }}": "30",
        "{{ .Generation }}": "0",
        "{{ .Kind }}": "",  # kube-eventer's decoded objects had an empty TypeMeta
        "{{ .TypeMeta.APIVersion }}": "",
        "{{ .Type }}": "Warning",
        "{{ .Reason }}": "BackOff",
        "{{ .Count }}": str(FULL["count"]),
        "{{ .FirstTimestamp }}": "2023-07-09 23:56:01 +0000 UTC",
        "{{ .LastTimestamp }}": "2023-07-10 05:15:47 +0000 UTC",
        "{{ .EventTime }}": "2023-07-10 05:31:39.694297 +0000 UTC",
        "{{ .InvolvedObject.Kind }}": "Pod",
        "{{ .InvolvedObject.Name }}": involved["name"],
        "{{ .InvolvedObject.UID }}": involved["uid"],
        "{{ .InvolvedObject.APIVersion }}": "v1",
        "{{ .InvolvedObject.ResourceVersion }}": involved["resourceVersion"],
        "{{ .InvolvedObject.FieldPath }}": involved["fieldPath"],
        "{{ .InvolvedObject }}": (f"{{Pod {involved['namespace']} {involved['name']} {involved['uid']} v1 "
                                  f"{involved['resourceVersion']} {involved['fieldPath']}}}"),
        "{{ .Source }}": "{kubelet minikube}",
        "{{ .Source.Component }}": "kubelet",
        "{{ .Source.Host }}": "minikube",
        "{{ .Series }}": "{7 2023-07-10 05:40:00.25 +0000 UTC Ongoing}",
        "{{ .Series.Count }}": "7",
        "{{ .Series.LastObservedTime }}": "2023-07-10 05:40:00.25 +0000 UTC",
        "{{ .Series.State }}": "Ongoing",
        "{{ .Related.Kind }}": "Node",
        "{{ .Related }}": "{Node  minikube n-1 v1  }",
        "{{ .Action }}": "",
        "{{ .ReportingController }}": "",
        "{{ .ReportingInstance }}": "",
        "{{.Reason}}": "BackOff",
    }
    for key, expected in cases.items():
        assert render(f"<{key}>", FULL) == f"<{expected}>", key
    assert render("a \n {{- .Reason -}} \n b", FULL) == "aBackOffb"  # trim markers as in Go


def test_unset_times_and_nil_pointers_print_as_go_zero_values():
    obj = copy.deepcopy(BASE)
    for key in ("firstTimestamp", "eventTime", "series", "related"):
        obj.pop(key, None)
    text = render("{{ .FirstTimestamp }}|{{ .EventTime }}|{{ .Series }}|{{ .Related }}|{{ .Series.Count }}|"
                  "{{ .Labels }}|{{ .Labels.x }}", obj)
    assert text == "0001-01-01 00:00:00 +0000 UTC|0001-01-01 00:00:00 +0000 UTC|<nil>|<nil>||map[]|<no value>"


def test_times_are_in_the_sinks_time_zone_as_go_prints_them():
    assert render("{{ .LastTimestamp }} / {{ .EventTime }}", FULL, "Asia/Shanghai") == (
        "2023-07-10 13:15:47 +0800 CST / 2023-07-10 13:31:39.694297 +0800 CST")
    assert render("{{ .LastTimestamp }}", FULL, "America/New_York") == "2023-07-10 01:15:47 -0400 EDT"
    assert go_time(None) == "0001-01-01 00:00:00 +0000 UTC"
    assert go_time(datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC)) == "2026-01-02 03:04:05.12 +0000 UTC"


def test_events_k8s_io_objects_render_through_the_same_struct():
    obj = next(o for o in real_objects("events-k8s-io-v1") if o.get("regarding"))
    text = render("{{ .InvolvedObject.Kind }}/{{ .InvolvedObject.Name }} {{ .Message }} {{ .ReportingController }}",
                  obj)
    assert text == (f"{obj['regarding']['kind']}/{obj['regarding']['name']} {obj['note']} "
                    f"{obj.get('reportingController', '')}")


def test_an_event_built_in_code_renders_its_normalized_fields():
    text = EventTemplate("webhook", "{{ .Name }} {{ .InvolvedObject.Name }} {{ .Count }} {{ .Source.Host }}").render(
        make_event(3))
    assert text == "app-3.17a0b0c0d0e0f000 app-3 1 node-1"


@pytest.mark.parametrize(("template", "words"), [
    ("{{ .Foo }}", "Event has no field Foo"),
    ("{{ .ObjectMeta.Nme }}", "ObjectMeta has no field Nme"),
    ("{{ .InvolvedObject.Bar }}", "ObjectReference has no field Bar"),
    ("{{ .Count.Value }}", "Event.Count is of type int and has no field Value"),
    ("{{ .Labels.a.b }}", "has no field b"),
    ("{{ .OwnerReferences.Name }}", "[]OwnerReference and has no field Name"),
    ('{{ index .Source "host" }}', "index needs a map"),
    ("{{ .uid }}", "Event has no field uid"),  # Go names are case-sensitive
])
def test_unknown_fields_are_start_up_errors_naming_them(template, words):
    with pytest.raises(SinkConfigError) as info:
        EventTemplate("webhook", template)
    assert words in str(info.value) and template in str(info.value) and info.value.option == "template"


def test_the_command_exits_2_with_one_line_naming_the_field(tmp_path):
    events = tmp_path / "events.jsonl"
    events.write_text("")
    proc = subprocess.run(
        [sys.executable, "-m", "eventrouter", f"--source=file:{events}", "--healthz-port=0",
         "--sink=webhook:http://127.0.0.1:9/hook?template={{ .ObjectMeta.Labelz }}"],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ObjectMeta has no field Labelz" in lines[0] and "'template'" in lines[0]
