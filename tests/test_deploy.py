"""deploy/: the plain manifests (kustomization) and the Helm chart (rendered by tests/helm_render.py).

Checks what ``kubectl apply`` and the kubelet would trip over (YAML, required fields, references
between objects, probes on a declared port), what the router would reject (the Deployment's args
go through ``eventrouter.cli.run_parser`` and every ``--sink`` through ``build_sink``, with the
Secret's keys as environment), the security settings, and the RBAC: a full run of two replicas
(leader election + ConfigMap checkpoint) against the simulator records every API request, and
every request must be allowed by the rules while every rule must be used.
"""

from __future__ import annotations

import copy
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventrouter.app import run
from eventrouter.cli import run_config, run_parser
from eventrouter.config import build_sink
from eventrouter.simulator import Simulator
from tests.helm_render import Renderer, TemplateError
from tests.helpers import real_objects

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "eventrouter"
NAMESPACED = {"ServiceAccount", "Role", "RoleBinding", "Secret", "Deployment", "Service", "ConfigMap"}
# granted as the issue asks (get/list/watch on events), though the router itself only lists and watches
GRANTED_NOT_CALLED = {("", "events", "get"), ("events.k8s.io", "events", "get")}


# ---- loading ------------------------------------------------------------------------------------
def plain_objects() -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    objs = []
    for name in kustomization["resources"]:
        objs += [o for o in yaml.safe_load_all((DEPLOY / name).read_text()) if o]
    return objs


def chart_values(**overrides: Any) -> dict[str, Any]:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    values.update(copy.deepcopy(overrides))
    return values


def helm_objects(release: str = "eventrouter", namespace: str = "eventrouter", **overrides: Any) -> list[dict]:
    rendered = Renderer(CHART).render_chart(chart_values(**overrides), release=release, namespace=namespace)
    objs = []
    for name, text in rendered.items():
        if name.endswith(".yaml"):
            objs += [o for o in yaml.safe_load_all(text) if o]
    return objs


def one(objs: list[dict], kind: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


# ---- generic validation -----------------------------------------------------------------------
def validate(objs: list[dict[str, Any]]) -> None:
    """Required fields per kind and references between the objects."""
    names = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objs}
    assert len(names) == len(objs), "two objects with the same kind, namespace and name"
    for obj in objs:
        assert obj.get("apiVersion") and obj.get("kind"), obj
        meta = obj["metadata"]
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", meta["name"]) and len(meta["name"]) <= 63
        if obj["kind"] in NAMESPACED:
            assert meta.get("namespace"), f"{obj['kind']}/{meta['name']} has no namespace"
        for key, value in {**meta.get("labels", {}), **meta.get("annotations", {})}.items():
            assert isinstance(value, str), f"label/annotation {key} must be a string, got {value!r}"
        check = _CHECKS.get(obj["kind"])
        if check:
            check(obj, objs)


def _check_rules(obj: dict, objs: list[dict]) -> None:
    assert obj["rules"]
    for rule in obj["rules"]:
        assert rule["apiGroups"] and rule["resources"] and rule["verbs"], rule
        assert set(rule["verbs"]) <= {"get", "list", "watch", "create", "update", "patch", "delete"}
        if "resourceNames" in rule:
            assert "create" not in rule["verbs"], "create cannot be limited by resourceNames"


def _check_binding(obj: dict, objs: list[dict]) -> None:
    ref = obj["roleRef"]
    assert ref["apiGroup"] == "rbac.authorization.k8s.io"
    namespace = obj["metadata"].get("namespace") if ref["kind"] == "Role" else None
    assert any(
        o["kind"] == ref["kind"]
        and o["metadata"]["name"] == ref["name"]
        and o["metadata"].get("namespace") == namespace
        for o in objs
    ), f"{ref} does not exist"
    for subject in obj["subjects"]:
        assert subject["kind"] == "ServiceAccount"
        assert any(
            o["kind"] == "ServiceAccount"
            and o["metadata"]["name"] == subject["name"]
            and o["metadata"]["namespace"] == subject["namespace"]
            for o in objs
        ), subject


def _check_deployment(obj: dict, objs: list[dict]) -> None:
    spec = obj["spec"]
    pod = spec["template"]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items(), "the selector must match the pod labels"
    pod_spec = pod["spec"]
    assert any(o["kind"] == "ServiceAccount" and o["metadata"]["name"] == pod_spec["serviceAccountName"] for o in objs)
    volumes = {v["name"] for v in pod_spec.get("volumes", [])}
    for container in pod_spec["containers"]:
        assert container["name"] and container["image"]
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        assert all(isinstance(p, int) for p in ports.values())
        for probe in ("livenessProbe", "readinessProbe"):
            port = container[probe]["httpGet"]["port"]
            assert port in ports or port in ports.values(), f"{probe} port {port} is not declared"
        assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes
        for source in container.get("envFrom", []):
            name = source["secretRef"]["name"]
            assert any(o["kind"] == "Secret" and o["metadata"]["name"] == name for o in objs) or name, name


def _check_service(obj: dict, objs: list[dict]) -> None:
    deployment = one(objs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert obj["spec"]["selector"].items() <= labels.items(), "the Service selects no pod"
    names = {p["name"] for c in deployment["spec"]["template"]["spec"]["containers"] for p in c["ports"]}
    for port in obj["spec"]["ports"]:
        assert isinstance(port["port"], int)
        assert port["targetPort"] in names or isinstance(port["targetPort"], int)


def _check_secret(obj: dict, objs: list[dict]) -> None:
    assert obj.get("data") or obj.get("stringData")
    assert all(isinstance(v, str) for v in (obj.get("stringData") or {}).values())


_CHECKS = {
    "ClusterRole": _check_rules,
    "Role": _check_rules,
    "ClusterRoleBinding": _check_binding,
    "RoleBinding": _check_binding,
    "Deployment": _check_deployment,
    "Service": _check_service,
    "Secret": _check_secret,
}


# ---- the Deployment: security, probes, args -------------------------------------------------------
def container(objs: list[dict]) -> dict[str, Any]:
    return one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def check_hardening(objs: list[dict]) -> None:
    deployment = one(objs, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 2
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["terminationGracePeriodSeconds"] > 30  # longer than --shutdown-timeout
    c = container(objs)
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8084}
    # writable places for a read-only root: the state directory (the image's WORKDIR) and /tmp
    assert {m["mountPath"] for m in c["volumeMounts"]} == {"/var/lib/eventrouter", "/tmp"}
    args = run_parser().parse_args(c["args"])
    assert args.leader_elect is True
    assert args.healthz_port == 8084
    assert args.log_format == "json"


def sink_env(objs: list[dict]) -> dict[str, str]:
    env = {}
    for secret in (o for o in objs if o["kind"] == "Secret"):
        env.update(secret.get("stringData") or {})
    return env


def check_sinks_build(objs: list[dict], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every --sink builds, its $VARs all come from the Secret, and no secret is written in the args."""
    c = container(objs)
    env = sink_env(objs)
    declared = {e["name"] for e in c.get("env", [])} | set(env)
    flags = run_parser().parse_args(c["args"]).sink
    for flag in flags:
        for var in re.findall(r"\$\{?(\w+)", flag):
            assert var in declared, f"{flag} uses ${var}, which neither env nor the Secret defines"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
        assert value not in " ".join(c["args"])
    for flag in flags:
        sink = build_sink(flag)
        for value in env.values():
            assert value not in repr(sink)  # the flag is shown masked
    return flags


# ---- plain manifests ------------------------------------------------------------------------------
def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    assert kustomization["namespace"] == "eventrouter"
    image = container(plain_objects())["image"]
    assert any(image.startswith(i["name"] + ":") for i in kustomization["images"])


def test_plain_manifests_are_valid_and_hardened(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = plain_objects()
    assert {o["kind"] for o in objs} == {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Secret",
        "Deployment",
        "Service",
    }
    validate(objs)
    check_hardening(objs)
    flags = check_sinks_build(objs, monkeypatch)
    assert any("$DINGTALK_TOKEN" in f for f in flags)  # the Secret example is used through $VAR
    assert container(objs)["envFrom"] == [{"secretRef": {"name": one(objs, "Secret")["metadata"]["name"]}}]


# ---- Helm chart -----------------------------------------------------------------------------------
def test_chart_renders_with_default_values(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = helm_objects()
    assert {o["kind"] for o in objs} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
    }
    validate(objs)
    check_hardening(objs)
    assert check_sinks_build(objs, monkeypatch) == ["log"]
    assert container(objs)["image"] == "ghcr.io/eventrouter/eventrouter:0.1.0"  # appVersion by default
    # the chart and the plain manifests grant the same permissions
    assert rules_of(objs) == rules_of(plain_objects())


def test_chart_with_sinks_and_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    sinks = [
        "log",
        "dingtalk:https://oapi.dingtalk.com/robot/send?access_token=$DINGTALK_TOKEN&sign=$DINGTALK_SIGN",
        "webhook:https://hooks.example.com/k8s?level=Warning&header=Authorization=Bearer%20$HOOK_TOKEN",
    ]
    secret_env = {"DINGTALK_TOKEN": "tok-123456", "DINGTALK_SIGN": "SECsign-7890", "HOOK_TOKEN": "hook-abcdef"}
    objs = helm_objects(
        release="prod",
        namespace="monitoring",
        sinks=sinks,
        secretEnv=secret_env,
        clusterName="prod-eu",
        extraArgs=["--max-event-age=1h"],
        image={"repository": "registry.local/eventrouter", "tag": "0.1.0-rc1", "pullPolicy": "Always"},
    )
    validate(objs)
    check_hardening(objs)
    assert check_sinks_build(objs, monkeypatch) == sinks
    secret = one(objs, "Secret")
    assert secret["metadata"]["name"] == "prod-eventrouter-sinks"
    assert secret["metadata"]["namespace"] == "monitoring"
    assert secret["stringData"] == secret_env
    args = run_parser().parse_args(container(objs)["args"])
    assert args.cluster_name == "prod-eu"
    assert args.max_event_age == 3600
    assert args.checkpoint == "configmap:monitoring/eventrouter-checkpoint"
    assert container(objs)["image"] == "registry.local/eventrouter:0.1.0-rc1"
    assert {o["metadata"]["name"] for o in objs if o["kind"] != "Service"} == {"prod-eventrouter"} | {
        "prod-eventrouter-sinks"
    }


def test_chart_with_an_existing_secret_and_no_leader_election() -> None:
    objs = helm_objects(
        existingSecret="my-sink-secrets",
        leaderElect=False,
        replicaCount=1,
        serviceAccount={"create": False, "name": "router"},
        service={"enabled": False},
    )
    assert "Secret" not in {o["kind"] for o in objs}
    assert "Service" not in {o["kind"] for o in objs}
    assert container(objs)["envFrom"] == [{"secretRef": {"name": "my-sink-secrets"}}]
    assert run_parser().parse_args(container(objs)["args"]).leader_elect is False
    assert not [r for r in one(objs, "Role")["rules"] if "leases" in r["resources"]]  # no Lease, no Lease rights
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "router"


def test_renderer_refuses_what_it_does_not_know(tmp_path: Path) -> None:
    (tmp_path / "templates").mkdir()
    (tmp_path / "Chart.yaml").write_text("name: x\nversion: 1.0.0\n")
    (tmp_path / "templates" / "a.yaml").write_text("x: {{ .Values.a | sha256sum }}\n")
    with pytest.raises(TemplateError, match="sha256sum"):
        Renderer(tmp_path).render_chart({"a": "b"})


# ---- RBAC against what the code calls ---------------------------------------------------------------
def rules_of(objs: list[dict]) -> set[tuple[str, str, str, str, str | None]]:
    """(scope, group, resource, verb, resourceName) granted to the ServiceAccount; scope '*' or a namespace."""
    granted = set()
    for binding in (o for o in objs if o["kind"] in ("ClusterRoleBinding", "RoleBinding")):
        ref = binding["roleRef"]
        scope = "*" if binding["kind"] == "ClusterRoleBinding" else binding["metadata"]["namespace"]
        role = next(o for o in objs if o["kind"] == ref["kind"] and o["metadata"]["name"] == ref["name"])
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        for name in rule.get("resourceNames") or [None]:
                            granted.add((scope, group, resource, verb, name))
    return granted


_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)(?:/namespaces/(?P<ns>[^/]+))?/(?P<res>[^/]+)"
    r"(?:/(?P<name>[^/]+))?$"
)


def api_calls(sim: Simulator) -> set[tuple[str | None, str, str, str, str | None]]:
    """(namespace, group, resource, verb, name) of every resource request the simulator saw."""
    calls = set()
    for request in sim.request_log:
        path = request.path.split("?", 1)[0]
        if path == "/version":
            continue  # a non-resource URL every authenticated client may read (system:discovery)
        match = _PATH.match(path)
        assert match, f"unexpected request {request.method} {path}"
        calls.add((match["ns"], match["group"] or "", match["res"], request.verb, match["name"]))
    return calls


def allowed(granted: set, call: tuple) -> bool:
    namespace, group, resource, verb, name = call
    return any(
        scope in ("*", namespace) and (g, r, v) == (group, resource, verb) and n in (None, name)
        for scope, g, r, v, n in granted
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Replica:
    """``eventrouter.app.run`` with the Deployment's args, pointed at the simulator, on a thread."""

    def __init__(self, args: list[str], kubeconfig: Path, out: Path, source_query: str = "") -> None:
        parsed = run_parser().parse_args(args)
        self.port = free_port()
        self.stop = threading.Event()
        # the cluster address and credentials differ from in-cluster; everything else is the manifest's
        self.config = replace(
            run_config(parsed),
            source=f"kubernetes:?inClusterConfig=false&auth={kubeconfig}{source_query}",
            sinks=[f"jsonfile:{out}"],
            healthz_ip="127.0.0.1",
            healthz_port=self.port,
            shutdown_timeout=5.0,
        )
        self.result: list[int] = []
        self.thread = threading.Thread(target=lambda: self.result.append(run(self.config, self.stop)), daemon=True)
        self.thread.start()

    def metric(self, name: str) -> float | None:
        _, text = get(f"http://127.0.0.1:{self.port}/metrics")
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rpartition(" ")[2])
        return None

    def ready(self) -> bool:
        return get(f"http://127.0.0.1:{self.port}/readyz")[0] == 200

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert self.result == [0]


@pytest.fixture
def sim(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Simulator, Path]]:
    monkeypatch.setenv("POD_NAMESPACE", "eventrouter")  # as the Deployment's downward API sets it
    simulator = Simulator(list(real_objects()[:100])).start()
    simulator.faults.bookmark_interval = 0.2
    try:
        yield simulator, simulator.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        simulator.stop()


@pytest.mark.timeout(120)
def test_rbac_covers_exactly_what_two_replicas_call(sim: tuple[Simulator, Path], tmp_path: Path) -> None:
    simulator, kubeconfig = sim
    objs = plain_objects()
    args = container(objs)["args"]
    out = tmp_path / "delivered.jsonl"  # the example plugin's sink: one line per delivered event
    a, b = Replica(args, kubeconfig, out), Replica(args, kubeconfig, out)
    try:
        wait_for(
            lambda: a.metric("eventrouter_leader") is not None and b.metric("eventrouter_leader") is not None,
            "both replicas to serve /metrics",
        )
        wait_for(
            lambda: (a.metric("eventrouter_leader"), b.metric("eventrouter_leader")) in ((1, 0), (0, 1)), "one leader"
        )
        leader = a if a.metric("eventrouter_leader") == 1 else b
        wait_for(lambda: leader.metric("eventrouter_sink_events_sent_total") == 100, "the 100 events")
        assert a.ready() and b.ready()  # the standby is ready too
        wait_for(lambda: leader.metric("eventrouter_checkpoint_age_seconds") is not None, "a checkpoint")
    finally:
        a.finish()
        b.finish()
    assert len(out.read_text().splitlines()) == 100  # one replica delivered, once
    # the events.k8s.io/v1 API, as ?api=events.k8s.io/v1 selects it (from scratch: it lists, then watches)
    c = Replica([*args, "--checkpoint=none"], kubeconfig, tmp_path / "c.jsonl", "&api=events.k8s.io/v1")
    try:
        wait_for(
            lambda: (
                {"list", "watch"}
                <= {r.verb for r in list(simulator.request_log) if r.path.startswith("/apis/events.k8s.io/")}
            ),
            "a list and a watch of events.k8s.io/v1",
        )
    finally:
        c.finish()

    calls = api_calls(simulator)
    granted = rules_of(objs)
    denied = sorted(call for call in calls if not allowed(granted, call))
    assert not denied, f"calls the RBAC does not allow: {denied}"
    used = {
        (g, r, v)
        for g_scope in [granted]
        for (scope, g, r, v, n) in g_scope
        if any(allowed({(scope, g, r, v, n)}, call) for call in calls)
    }
    unused = {(g, r, v) for (_, g, r, v, _) in granted} - used
    assert unused == GRANTED_NOT_CALLED, f"rules no call needs: {sorted(unused)}"
    # the namespaced rights are for exactly the names the router uses
    assert {(c[2], c[4]) for c in calls if c[0] == "eventrouter" and c[4]} == {
        ("leases", "eventrouter"),
        ("configmaps", "eventrouter-checkpoint"),
    }
