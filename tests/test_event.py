"""Normalization of real recorded Events from both APIs into the Event model."""

from datetime import UTC, datetime

import orjson
import pytest

from eventrouter.event import Event, InvolvedObject, MalformedEvent, format_time, parse_time
from tests.helpers import real_objects


def by_uid(uid, api="core-v1"):
    return next(o for o in real_objects(api) if o["metadata"]["uid"] == uid)


def test_every_recorded_object_normalizes():
    objs = real_objects() + real_objects("events-k8s-io-v1")
    assert len(objs) == 1220
    for obj in objs:
        event = Event.from_object(obj, "prod")
        assert event.uid == obj["metadata"]["uid"]
        assert event.last_timestamp.tzinfo is UTC and event.first_timestamp.tzinfo is UTC
        assert event.first_timestamp <= event.last_timestamp or obj.get("firstTimestamp")
        assert event.count >= 1
        assert event.cluster == "prod"
        orjson.dumps(event.to_dict())  # always serializable


def test_core_v1_repeated_event_with_count_and_field_path():
    event = Event.from_object(by_uid("11603266-5ad4-4986-abdb-0a402259f4e0"))
    assert event.type == "Warning" and event.reason == "Unhealthy"
    assert event.count == 9
    assert event.first_timestamp == datetime(2023, 7, 10, 5, 24, 25, tzinfo=UTC)
    assert event.last_timestamp == datetime(2023, 7, 10, 5, 26, 15, tzinfo=UTC)
    assert event.involved_object == InvolvedObject(
        kind="Pod", namespace="message-container-creating-failed-mount", name="failing-liveness-pod",
        uid="c6e243c6-21c3-4d14-96f6-49f6a5dc3efc", api_version="v1", field_path="spec.containers{my-container}",
    )
    assert (event.source_component, event.source_host) == ("kubelet", "minikube")
    assert event.resource_version == "953544"
    assert event.name == "failing-liveness-pod.17706a3bf2588d79"


def test_core_v1_new_recorder_event_uses_series_and_event_time():
    # written by the events.k8s.io recorder: no count/lastTimestamp, a series instead
    event = Event.from_object(by_uid("64330c31-0f5e-46f3-8fb6-ffdac523bb77"))
    assert event.count == 3
    assert event.last_timestamp == datetime(2023, 7, 11, 4, 40, 44, 264058, tzinfo=UTC)
    assert event.first_timestamp == datetime(2023, 7, 11, 4, 25, 44, 224298, tzinfo=UTC)
    assert event.source_component == "default-scheduler"  # source is empty: reportingComponent
    assert event.reporting_controller == "default-scheduler"
    assert event.action == "Scheduling"


def test_core_v1_event_time_only():
    event = Event.from_object(by_uid("8ff136be-d0ba-4a62-8a88-459ee38d7448"))
    assert event.count == 1
    assert event.first_timestamp == event.last_timestamp == datetime(2023, 7, 10, 5, 31, 39, 694297, tzinfo=UTC)
    assert event.reporting_instance == "default-scheduler-minikube"


def test_cluster_scoped_node_event():
    event = Event.from_object(by_uid("552b701e-6d15-4860-a2c6-2232b915c55a"))
    assert event.involved_object.kind == "Node" and event.involved_object.namespace == ""
    assert event.is_cluster_scoped
    assert event.namespace == "default"  # the Event object itself lives in a namespace
    assert event.to_dict()["last_timestamp"] == "2025-12-10T17:25:57Z"


def test_events_k8s_io_v1_maps_regarding_note_and_deprecated_fields():
    event = Event.from_object(real_objects("events-k8s-io-v1")[0])
    assert event.message == "Successfully assigned test-530513/some-pod to test-pgd-control-plane"
    assert event.involved_object == InvolvedObject(
        kind="Pod", namespace="test-530513", name="some-pod", uid="ace87ee8-15fb-46ae-9dae-c77422c2010f",
        api_version="v1",
    )
    assert event.count == 1
    assert event.source_component == "default-scheduler"
    assert event.first_timestamp == event.last_timestamp == datetime(2023, 2, 16, 18, 25, 7, tzinfo=UTC)
    assert event.resource_version == "320932"


def test_events_v1_series_and_reporting_controller():
    obj = {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": "p.1", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                     "creationTimestamp": "2024-01-01T00:00:00Z"},
        "eventTime": "2024-01-01T00:00:00.123456789Z",
        "series": {"count": 4, "lastObservedTime": "2024-01-01T00:05:00.5Z"},
        "reportingController": "kubelet", "reportingInstance": "node-a", "action": "Pulling",
        "reason": "Pulling", "regarding": {"kind": "Pod", "name": "p", "namespace": "ns"}, "note": "pulling",
        "type": "Normal",
    }
    event = Event.from_object(obj)
    assert event.count == 4
    assert event.first_timestamp == datetime(2024, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
    assert event.last_timestamp == datetime(2024, 1, 1, 0, 5, 0, 500000, tzinfo=UTC)
    assert event.source_component == "kubelet" and event.reporting_instance == "node-a"


def test_creation_timestamp_is_the_last_fallback():
    obj = {"metadata": {"uid": "u", "creationTimestamp": "2024-03-01T10:00:00+02:00"}, "reason": "X"}
    event = Event.from_object(obj)
    assert event.last_timestamp == datetime(2024, 3, 1, 8, 0, tzinfo=UTC)
    assert event.to_dict()["last_timestamp"] == "2024-03-01T08:00:00Z"


@pytest.mark.parametrize(
    ("obj", "why"),
    [
        ([1, 2], "expected a JSON object"),
        ({"kind": "Pod", "metadata": {}}, "kind is 'Pod'"),
        ({"kind": "Event"}, "no metadata"),
        ({"metadata": {"name": "x"}, "lastTimestamp": "yesterday"}, "not RFC 3339"),
        ({"metadata": {"name": "x"}, "count": "many"}, "invalid literal"),
    ],
)
def test_malformed_objects_raise_malformed_event(obj, why):
    with pytest.raises(MalformedEvent, match=why):
        Event.from_object(obj)


def test_time_helpers():
    assert parse_time("2023-07-10T05:31:39.694297123Z") == datetime(2023, 7, 10, 5, 31, 39, 694297, tzinfo=UTC)
    assert parse_time(None) is None
    assert format_time(datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2024-01-02T03:04:05Z"


def test_to_dict_key_order_is_stable():
    event = Event.from_object(real_objects()[0])
    assert list(event.to_dict()) == [
        "uid", "resource_version", "cluster", "namespace", "name", "type", "reason", "message", "count",
        "first_timestamp", "last_timestamp", "involved_object", "source_component", "source_host",
        "reporting_controller", "reporting_instance", "action",
    ]
    assert "raw" in event.to_dict(raw=True)


@pytest.mark.parametrize("api", ["core-v1", "events-k8s-io-v1"])
def test_from_object_builds_an_ordinary_frozen_event(api):
    """from_object skips the dataclass __init__ for speed; the result must be indistinguishable from it."""
    import dataclasses
    import pickle

    for obj in real_objects(api)[:50]:
        event = Event.from_object(obj, "prod")
        assert type(event) is Event and type(event.involved_object) is InvolvedObject
        fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(Event)}
        same = Event(**fields)
        assert event == same and hash(event.involved_object) == hash(same.involved_object)
        assert event.involved_object == InvolvedObject(**dataclasses.asdict(event.involved_object))
        assert dataclasses.replace(event, uid="other").uid == "other"
        assert pickle.loads(pickle.dumps(event)) == event
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.uid = "changed"  # type: ignore[misc]
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.involved_object.kind = "changed"  # type: ignore[misc]


def test_identical_involved_objects_are_shared_and_distinct_ones_are_not():
    ref = {"kind": "Pod", "namespace": "default", "name": "web-1", "uid": "p-1", "apiVersion": "v1"}
    base = {"kind": "Event", "metadata": {"uid": "e-1", "resourceVersion": "1", "namespace": "default"}}
    first = Event.from_object({**base, "involvedObject": dict(ref)})
    again = Event.from_object({**base, "involvedObject": dict(ref)})
    other = Event.from_object({**base, "involvedObject": {**ref, "fieldPath": "spec.containers{web}"}})
    assert first.involved_object is again.involved_object
    assert first.involved_object == InvolvedObject(kind="Pod", namespace="default", name="web-1", uid="p-1",
                                                   api_version="v1")
    assert other.involved_object.field_path == "spec.containers{web}" and other.involved_object.name == "web-1"
    assert Event.from_object(base).involved_object == InvolvedObject()


def test_text_fields_that_are_not_strings_become_strings():
    obj = {"metadata": {"uid": "u", "name": "e"}, "type": "Warning", "reason": 42, "message": 5,
           "involvedObject": {"kind": "Pod", "name": "p"}}
    event = Event.from_object(obj)
    assert (event.reason, event.message) == ("42", "5")
