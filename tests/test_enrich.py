"""Enrichment: labels, selected annotations and the top owner of each event's involved object."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from eventrouter import SinkURL
from eventrouter.app import RunConfig, run
from eventrouter.enrich import (
    Enricher,
    EnrichSettings,
    TokenBucket,
    WaitBudget,
    parse_features,
    resource_path,
)
from eventrouter.errors import ConfigError
from eventrouter.event import Event, Owner
from eventrouter.filters import EventFilter
from eventrouter.selectors import LabelSelector, SelectorError
from eventrouter.simulator.sim import new_event
from eventrouter.sources import SourceContext
from eventrouter.sources.k8s_client import ApiClient, load_configuration
from sinks.log import LogSink
from tests.servers.fake_dingtalk import FakeDingTalk
from tests.servers.simulator import Simulator, wait_for

ALL = frozenset({"labels", "annotations", "owner"})


def api_for(sim: Simulator, tmp_path: Path) -> ApiClient:
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    return ApiClient(load_configuration(kubeconfig=str(kubeconfig), context=None, in_cluster_mode=False))


def pod_event(namespace: str, pod: str, reason: str = "BackOff", message: str | None = None) -> Event:
    obj = new_event(namespace=namespace, name=pod, reason=reason, message=message)
    return Event.from_object(obj)


def settled(enricher: Enricher, event: Event) -> Event:
    """Enrich, waiting for the background lookups (a test wants the final answer, not the first)."""
    wait_for(lambda: not enricher._inflight, what="lookups done")
    enricher.enrich(event)
    wait_for(lambda: not enricher._inflight, what="owner lookups done")
    return enricher.enrich(event)


@pytest.fixture
def workloads(sim: Simulator) -> Simulator:
    w = sim.workloads
    w.add("Deployment", "shop", "api", labels={"team": "payments", "app": "api"})
    w.add("ReplicaSet", "shop", "api-7d9f8c6b5", labels={"team": "payments"}, owner=("Deployment", "api"))
    w.add("Pod", "shop", "api-7d9f8c6b5-xk2p2", labels={"team": "payments", "app": "api"},
          annotations={"team.example.com/oncall": "payments-oncall", "kubectl.kubernetes.io/last-applied-configuration":
                       "{...a whole manifest...}"},
          owner=("ReplicaSet", "api-7d9f8c6b5"))
    w.add("CronJob", "batch", "report")
    w.add("Job", "batch", "report-28112026", owner=("CronJob", "report"))
    w.add("Pod", "batch", "report-28112026-abcde", labels={"team": "data"}, owner=("Job", "report-28112026"))
    w.add("StatefulSet", "db", "ingester")
    w.add("Pod", "db", "ingester-0", owner=("StatefulSet", "ingester"))
    w.add("DaemonSet", "kube-system", "node-exporter")
    w.add("Pod", "kube-system", "node-exporter-q7k2l", owner=("DaemonSet", "node-exporter"))
    w.add("Pod", "shop", "bare", labels={"team": "checkout"})
    # a ReplicaSet whose Deployment was deleted
    w.add("ReplicaSet", "shop", "old-5c8d7f9b6", owner=("Deployment", "old"))
    w.add("Pod", "shop", "old-5c8d7f9b6-zzzzz", owner=("ReplicaSet", "old-5c8d7f9b6"))
    return sim


@pytest.mark.parametrize(
    ("namespace", "pod", "owner"),
    [
        ("shop", "api-7d9f8c6b5-xk2p2", Owner("Deployment", "shop", "api", "apps/v1")),
        ("batch", "report-28112026-abcde", Owner("CronJob", "batch", "report", "batch/v1")),
        ("db", "ingester-0", Owner("StatefulSet", "db", "ingester", "apps/v1")),
        ("kube-system", "node-exporter-q7k2l", Owner("DaemonSet", "kube-system", "node-exporter", "apps/v1")),
        ("shop", "bare", Owner("Pod", "shop", "bare", "v1")),  # nothing controls it: itself
        ("shop", "old-5c8d7f9b6-zzzzz", Owner("Deployment", "shop", "old", "apps/v1")),  # deleted owner: named
    ],
)
def test_owner_chains_resolve_to_the_top_workload(workloads: Simulator, tmp_path: Path, namespace, pod, owner):
    enricher = Enricher(api_for(workloads, tmp_path), EnrichSettings(features=ALL, annotations=("team.example.com/*",)))
    event = settled(enricher, pod_event(namespace, pod))
    assert event.owner == owner
    enricher.close()


def test_labels_and_only_the_selected_annotations(workloads: Simulator, tmp_path: Path):
    enricher = Enricher(api_for(workloads, tmp_path), EnrichSettings(features=ALL, annotations=("team.example.com/*",)))
    event = settled(enricher, pod_event("shop", "api-7d9f8c6b5-xk2p2"))
    assert dict(event.labels) == {"team": "payments", "app": "api"}
    assert dict(event.annotations) == {"team.example.com/oncall": "payments-oncall"}
    data = event.to_dict()
    assert data["owner"] == {"kind": "Deployment", "namespace": "shop", "name": "api", "api_version": "apps/v1"}
    assert data["labels"] == {"team": "payments", "app": "api"}
    with pytest.raises(TypeError):
        event.labels["team"] = "x"  # type: ignore[index]
    enricher.close()


def test_only_metadata_is_ever_read_and_each_object_once(workloads: Simulator, tmp_path: Path):
    enricher = Enricher(api_for(workloads, tmp_path), EnrichSettings(features=ALL))
    for _ in range(3):
        settled(enricher, pod_event("shop", "api-7d9f8c6b5-xk2p2"))
    gets = [r for r in workloads.request_log if r.verb == "get"]
    assert sorted(r.path for r in gets) == [
        "/api/v1/namespaces/shop/pods/api-7d9f8c6b5-xk2p2",
        "/apis/apps/v1/namespaces/shop/deployments/api",
        "/apis/apps/v1/namespaces/shop/replicasets/api-7d9f8c6b5",
    ]
    assert workloads.workloads.full_reads == 0  # every answer was PartialObjectMetadata
    enricher.close()


def test_a_deleted_object_is_remembered_not_asked_again(workloads: Simulator, tmp_path: Path):
    enricher = Enricher(api_for(workloads, tmp_path), EnrichSettings(features=ALL))
    for _ in range(5):
        event = settled(enricher, pod_event("shop", "gone-pod"))
        assert event.owner is None and not event.labels
    gets = [r for r in workloads.request_log if r.verb == "get"]
    assert [(r.path, r.status) for r in gets] == [("/api/v1/namespaces/shop/pods/gone-pod", 404)]
    assert enricher.stats.events["not_found"] >= 5
    enricher.close()


def test_a_403_names_the_rbac_rule(workloads: Simulator, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    workloads.faults.forbid.append("/replicasets/")
    enricher = Enricher(api_for(workloads, tmp_path), EnrichSettings(features=ALL))
    event = settled(enricher, pod_event("shop", "api-7d9f8c6b5-xk2p2"))
    # the Pod was readable: its labels are there; the owner stops at what could be read
    assert event.labels["team"] == "payments"
    assert event.owner == Owner("ReplicaSet", "shop", "api-7d9f8c6b5", "apps/v1")
    assert 'apiGroups: ["apps"], resources: ["replicasets"], verbs: ["get"]' in caplog.text
    enricher.close()


def test_a_storm_makes_no_more_requests_than_cache_misses_at_the_configured_rate(sim: Simulator, tmp_path: Path):
    """10,000 events over 300 pods of 30 Deployments: one metadata request per object, at most
    burst + qps * t requests by any time t, and the watch is never held for long."""
    for d in range(30):
        sim.workloads.add("Deployment", "storm", f"app{d}", labels={"team": f"t{d % 3}"})
        sim.workloads.add("ReplicaSet", "storm", f"app{d}-5d4f8b7c9", owner=("Deployment", f"app{d}"))
        for p in range(10):
            sim.workloads.add("Pod", "storm", f"app{d}-5d4f8b7c9-p{p:04d}", labels={"team": f"t{d % 3}"},
                              owner=("ReplicaSet", f"app{d}-5d4f8b7c9"))
    events = [pod_event("storm", f"app{d}-5d4f8b7c9-p{p:04d}") for d in range(30) for p in range(10)]
    qps, burst = 150.0, 20
    enricher = Enricher(api_for(sim, tmp_path), EnrichSettings(features=ALL, qps=qps, burst=burst))
    started = time.monotonic()
    for i in range(10_000):
        enricher.enrich(events[i % len(events)])
    storm_seconds = time.monotonic() - started
    wait_for(lambda: not enricher._inflight, timeout=30, what="background lookups")
    answers = sim.workloads.answered
    assert len(answers) == 300 + 30 + 30  # one per object: pods, ReplicaSets, Deployments
    assert len({path for _, path in answers}) == len(answers)
    first = answers[0][0]
    for n, (stamp, _) in enumerate(answers, start=1):
        assert n <= burst + qps * (stamp - first) + 1, f"request {n} came too early"
    # the watch waited at most WAIT_SHARE of the time plus one timeout, never for the whole warm-up
    assert storm_seconds < 0.25 + 0.1 * (answers[-1][0] - first) + 2.0
    # after the warm-up every event is enriched
    assert all(settled(enricher, e).owner is not None for e in events[:30])
    enricher.close()


def test_rate_limiter_and_wait_budget():
    now = [0.0]
    bucket = TokenBucket(10.0, 2, clock=lambda: now[0])
    assert bucket.try_take() and bucket.try_take() and not bucket.try_take()
    now[0] += 0.1
    assert bucket.try_take() and not bucket.try_take()
    budget = WaitBudget(0.25, share=0.1, clock=lambda: now[0])
    budget.spend(0.25)
    assert budget.budget() == pytest.approx(0.0)
    now[0] += 1.0
    assert budget.budget() == pytest.approx(0.1)
    now[0] += 10.0
    assert budget.budget() == pytest.approx(0.25)  # saved up to one timeout only


# ---- selectors and filters ------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("selector", "labels", "matches"),
    [
        ("team=payments", {"team": "payments"}, True),
        ("team==payments", {"team": "checkout"}, False),
        ("team!=payments", {}, True),  # as Kubernetes: a missing label is "not equal"
        ("team in (payments, checkout)", {"team": "checkout"}, True),
        ("team notin (qa)", {"team": "qa"}, False),
        ("team", {"team": ""}, True),
        ("!team", {"team": "x"}, False),
        ("team=payments,tier in (web,api),!temp", {"team": "payments", "tier": "api"}, True),
        ("team=payments,tier in (web,api),!temp", {"team": "payments", "tier": "api", "temp": "1"}, False),
        ("app.kubernetes.io/name=api", {"app.kubernetes.io/name": "api"}, True),
    ],
)
def test_label_selectors(selector, labels, matches):
    assert LabelSelector(selector).matches(labels) is matches


@pytest.mark.parametrize("selector", ["", "team in (a", "team in ()", "=x", "team=a b", "team in a,b)"])
def test_bad_label_selectors(selector):
    with pytest.raises(SelectorError):
        LabelSelector(selector)


def flt(query: str) -> EventFilter:
    return EventFilter("log", LogSink.parse_options(SinkURL.parse(f"log:?{query}")))


def test_label_owner_and_message_filters(workloads: Simulator, tmp_path: Path):
    enricher = Enricher(api_for(workloads, tmp_path), EnrichSettings(features=ALL))
    payments = settled(enricher, pod_event("shop", "api-7d9f8c6b5-xk2p2"))
    checkout = settled(enricher, pod_event("shop", "bare", reason="Failed", message="Error: ImagePullBackOff"))
    unknown = pod_event("shop", "never-looked-up")
    events = [payments, checkout, unknown]
    assert [e for e in events if flt("labels=team=payments").accepts(e)] == [payments]
    assert [e for e in events if flt("labels=team in (payments,checkout)").accepts(e)] == [payments, checkout]
    assert [e for e in events if flt("exclude_labels=team=payments").accepts(e)] == [checkout, unknown]
    assert [e for e in events if flt("owner_kinds=Deployment,StatefulSet").accepts(e)] == [payments]
    assert [e for e in events if flt("message=^Back-off").accepts(e)] == [payments, unknown]
    assert flt("labels=team=a").needs == {"labels"} and flt("owner_kinds=Job").needs == {"owner"}
    assert not flt("labels=team=a").route_keyed and flt("reasons=x").route_keyed
    enricher.close()


def test_a_bad_selector_is_a_start_up_error_naming_the_option():
    from eventrouter.errors import SinkConfigError

    with pytest.raises(SinkConfigError, match=r"labels.*not a label selector"):
        flt("labels=team in (a")


def test_enrich_flag_words():
    assert parse_features("labels,owner") == {"labels", "owner"}
    assert parse_features("all") == ALL
    assert parse_features("") == frozenset() and parse_features("none") == frozenset()
    with pytest.raises(ConfigError, match="unknown owners"):
        parse_features("labels,owners")


def test_resource_paths():
    assert resource_path("v1", "Pod", "shop", "p") == "/api/v1/namespaces/shop/pods/p"
    assert resource_path("v1", "Node", "", "n1") == "/api/v1/nodes/n1"
    assert resource_path("apps/v1", "Deployment", "shop", "api") == "/apis/apps/v1/namespaces/shop/deployments/api"
    assert resource_path("batch/v1", "CronJob", "b", "r") == "/apis/batch/v1/namespaces/b/cronjobs/r"
    assert resource_path("example.com/v2", "Widget", "ns", "w") == "/apis/example.com/v2/namespaces/ns/widgets/w"


# ---- end to end: two teams, two robots ----------------------------------------------------------

def test_two_teams_events_go_to_two_robots_by_label(workloads: Simulator, tmp_path: Path):
    for ns, pod in (("shop", "api-7d9f8c6b5-xk2p2"), ("shop", "bare")):
        workloads.add_event(new_event(namespace=ns, name=pod, reason="BackOff",
                                      message=f"Back-off restarting failed container in pod {pod}"))
    kubeconfig = workloads.write_kubeconfig(tmp_path / "kubeconfig")
    with FakeDingTalk() as payments, FakeDingTalk() as checkout:
        config = RunConfig(
            source=f"kubernetes:?inClusterConfig=false&auth={kubeconfig}",
            sinks=[f"dingtalk:{payments.url}?access_token={payments.token}&labels=team=payments",
                   f"dingtalk:{checkout.url}?access_token={checkout.token}&labels=team=checkout"],
            context=SourceContext(checkpoint="none"),
            healthz_port=0,
            shutdown_timeout=10,
            enrich=EnrichSettings(timeout=2.0),  # no --enrich: the labels= filters turn it on
        )
        stop = threading.Event()
        thread = threading.Thread(target=run, args=(config, stop))
        thread.start()
        try:
            wait_for(lambda: payments.messages and checkout.messages, what="both robots got a message")
            time.sleep(0.5)  # nothing else may follow
        finally:
            stop.set()
            thread.join(20)
        payments_text = " ".join(payments.contents())
        checkout_text = " ".join(checkout.contents())
    assert "api-7d9f8c6b5-xk2p2" in payments_text and "bare" not in payments_text
    assert "bare" in checkout_text and "api-7d9f8c6b5-xk2p2" not in checkout_text


def test_enrichment_needs_the_kubernetes_source(tmp_path: Path):
    events = tmp_path / "events.jsonl"
    events.write_text("")
    config = RunConfig(source=f"file:{events}", sinks=["log:?labels=team=a"], context=SourceContext(),
                       healthz_port=0)
    with pytest.raises(ConfigError, match="needs --source=kubernetes"):
        run(config)


def test_text_lines_and_templates_name_the_owner_and_labels(workloads: Simulator, tmp_path: Path):
    from eventrouter.templates import EventTemplate
    from sinks.log import _text_line

    enricher = Enricher(api_for(workloads, tmp_path), EnrichSettings(features=ALL))
    event = settled(enricher, pod_event("shop", "api-7d9f8c6b5-xk2p2"))
    plain = pod_event("shop", "api-7d9f8c6b5-xk2p2")
    assert "Pod/shop/api-7d9f8c6b5-xk2p2 (Deployment api) BackOff" in _text_line(event)
    assert "Pod/shop/api-7d9f8c6b5-xk2p2 BackOff" in _text_line(plain)
    template = EventTemplate("webhook", "{{ owner.kind }} {{ owner.name }} team={{ labels.team }}", option="template")
    assert template.render(event) == "Deployment api team=payments"
    assert template.render(plain) == "  team="  # not enriched: empty, never an error
    enricher.close()


# ---- the chart grants exactly what enrichment reads -----------------------------------------------

def test_chart_grants_get_on_exactly_the_kinds_enrichment_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tests.helpers import real_objects
    from tests.test_deploy import Replica, allowed, api_calls, helm_lint, helm_objects, router_args, rules_of

    helm_lint(enrich={"features": ["labels", "owner"]})
    objs = helm_objects(enrich={"features": ["labels", "owner"], "annotations": ["team.example.com/*"]})
    args = router_args(objs)
    assert "--enrich=labels,owner" in args and "--enrich-annotations=team.example.com/*" in args
    granted = rules_of(objs)
    enrich_rules = {(g, r, v) for (s, g, r, v, _) in granted if s == "*" and r != "events"}
    assert enrich_rules == {(g, r, v) for g, r in [("", "pods"), ("", "nodes"), ("apps", "replicasets"),
                                                   ("apps", "deployments"), ("apps", "statefulsets"),
                                                   ("apps", "daemonsets"), ("batch", "jobs"), ("batch", "cronjobs")]
                            for v in ("get", "list")}
    assert not {r for (_, _, r, _, _) in rules_of(helm_objects()) if r in ("pods", "deployments")}  # off: none

    objects = [o for o in real_objects() if (o.get("involvedObject") or {}).get("kind") in
               ("Pod", "ReplicaSet", "Deployment", "Job", "CronJob", "StatefulSet", "DaemonSet", "Node")]
    sim = Simulator(objects).start()
    try:
        monkeypatch.setenv("POD_NAMESPACE", "eventrouter")
        replica = Replica([*args, "--enrich-qps=500", "--enrich-burst=500"], sim.write_kubeconfig(tmp_path / "kc"),
                          tmp_path / "out.jsonl")
        try:
            stored = len(sim.store.events)  # the recording repeats a few uids
            wait_for(lambda: replica.metric("eventrouter_sink_events_sent_total") == stored, timeout=30,
                     what="every event delivered")
            wait_for(lambda: (replica.metric("eventrouter_enrich_cache_objects") or 0) >= len(sim.workloads),
                     timeout=30, what="every served object looked up")
        finally:
            replica.finish()
        calls = [c for c in api_calls(sim) if c[2] not in ("events", "leases", "configmaps")]
        assert {call[3] for call in calls} == {"get", "list"}  # the warm-up lists, then single lookups
        denied = [call for call in calls if not allowed(granted, call)]
        assert not denied, f"enrichment calls the chart's RBAC does not allow: {denied}"
    finally:
        sim.stop()


def test_a_cold_start_is_enriched_from_the_first_event(tmp_path: Path):
    """The cache is warmed by listing metadata before the first list of events: an owner_kinds filter
    routes every listed event right at start-up, not only those after a per-object warm-up (found by QA:
    1 of 1,217 events before)."""
    import orjson

    sim = Simulator("builtin").start()
    try:
        def top_kind(ref: dict) -> str | None:
            kind, ns, name = ref.get("kind"), ref.get("namespace") or "", ref.get("name")
            obj = sim.workloads.get(kind, ns, name) if kind and name else None
            while obj is not None:
                refs = obj["metadata"].get("ownerReferences") or []
                if not refs:
                    return str(obj["kind"])
                kind, name = refs[0]["kind"], refs[0]["name"]
                parent = sim.workloads.get(kind, ns, name)
                if parent is None:
                    return str(kind)
                obj = parent
            return None

        expected = {o["metadata"]["uid"] for o in sim.store.events.values()
                    if top_kind(o.get("involvedObject") or {}) == "Deployment"}
        assert len(expected) > 100
        out = tmp_path / "out.jsonl"
        config = RunConfig(source=f"kubernetes:?inClusterConfig=false&auth={sim.write_kubeconfig(tmp_path / 'kc')}",
                           sinks=[f"jsonfile:{out}?owner_kinds=Deployment"], context=SourceContext(checkpoint="none"),
                           healthz_port=0, shutdown_timeout=10, data_dir=str(tmp_path / "data"))
        stop = threading.Event()
        thread = threading.Thread(target=run, args=(config, stop))
        thread.start()
        try:
            wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= len(expected), timeout=30,
                     what="the Deployments' events")
            time.sleep(0.3)
        finally:
            stop.set()
            thread.join(20)
        got = [orjson.loads(line)["uid"] for line in out.read_text().splitlines()]
    finally:
        sim.stop()
    assert sorted(got) == sorted(expected)
