"""deploy/: the plain manifests (kustomizations), the Helm chart, the dashboard and the alerts.

The chart is rendered and linted by real Helm (the v4 SDK, ``helm-python-sdk``). Checks what
``kubectl apply`` and the kubelet would trip over (YAML, required fields, references between
objects, probes on a declared port), what the router would reject (the Deployment's args go
through ``eventrouter.cli.run_parser`` and every ``--sink`` through ``build_sink``, with the
Secret's keys as environment), the security settings, and the RBAC: a full run of two replicas
(leader election + ConfigMap checkpoint) against the simulator records every API request, and
every request must be allowed by the rules while every rule must be used; for deploy/ and for
the kube-eventer migration (kube-eventer's ServiceAccount in kube-system).
The Grafana dashboard's queries and the PrometheusRule's expressions are parsed (promql-parser)
and may name only metrics the router's collector exports.
"""

from __future__ import annotations

import ast
import json
import os
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

import helm_python
import promql_parser
import pytest
import yaml

from eventrouter.app import run
from eventrouter.cli import run_config, run_parser
from eventrouter.config import build_sink
from eventrouter.health import SourceState
from eventrouter.metrics import RouterCollector
from eventrouter.router import Router
from eventrouter.simulator import Simulator
from eventrouter.sources.k8s_checkpoint import parse_checkpoint_flag
from tests.helpers import real_objects

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "eventrouter"
KUBE_EVENTER = DEPLOY / "kube-eventer"
MONITORING = DEPLOY / "monitoring"
NAMESPACED = {
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "Secret",
    "Deployment",
    "Service",
    "ConfigMap",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "ServiceMonitor",
    "PrometheusRule",
}
# kube-eventer's own ServiceAccount, as its manifests create it; the migration overlay uses it
KUBE_EVENTER_SA = {
    "apiVersion": "v1",
    "kind": "ServiceAccount",
    "metadata": {"name": "kube-eventer", "namespace": "kube-system"},
}
# granted as the issue asks (get/list/watch on events), though the router itself only lists and watches
GRANTED_NOT_CALLED = {("", "events", "get"), ("events.k8s.io", "events", "get")}


# ---- loading ------------------------------------------------------------------------------------
def plain_objects(folder: Path = DEPLOY) -> list[dict[str, Any]]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    objs = []
    for name in kustomization["resources"]:
        objs += [o for o in yaml.safe_load_all((folder / name).read_text()) if o]
    return objs


def helm_render(release: str = "eventrouter", namespace: str = "eventrouter", **values: Any) -> dict[str, str]:
    """``helm template`` with these values over the chart's defaults (Helm merges them deeply)."""
    return helm_python.Chart.load(CHART).render(values, name=release, namespace=namespace)


def helm_objects(release: str = "eventrouter", namespace: str = "eventrouter", **values: Any) -> list[dict]:
    objs = []
    for name, text in helm_render(release, namespace, **values).items():
        if name.endswith(".yaml"):
            objs += [o for o in yaml.safe_load_all(text) if o]
    return objs


def helm_lint(**values: Any) -> None:
    """``helm lint --strict``: no warning and no error (the "icon is recommended" note is info)."""
    report = helm_python.lint(CHART, values, strict=True, kube_version="v1.30.0")
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert not problems and not report["errors"], report


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
            ref = source.get("secretRef") or source["configMapRef"]
            assert ref["name"], source
        for env in container.get("env", []):
            assert env["name"] and ("value" in env or "valueFrom" in env), env


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


def pod_labels(objs: list[dict]) -> dict[str, str]:
    labels: dict[str, str] = one(objs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    return labels


def _check_pdb(obj: dict, objs: list[dict]) -> None:
    assert obj["spec"]["selector"]["matchLabels"].items() <= pod_labels(objs).items(), "the PDB selects no pod"
    assert ("maxUnavailable" in obj["spec"]) != ("minAvailable" in obj["spec"])


def _check_network_policy(obj: dict, objs: list[dict]) -> None:
    assert obj["spec"]["podSelector"]["matchLabels"].items() <= pod_labels(objs).items()
    ports = {p["name"] for p in container(objs)["ports"]}
    for rule in obj["spec"].get("ingress", []):
        assert {p["port"] for p in rule["ports"]} <= ports
    assert set(obj["spec"]["policyTypes"]) == {"Ingress"} | ({"Egress"} if obj["spec"].get("egress") else set())


def _check_service_monitor(obj: dict, objs: list[dict]) -> None:
    selector = obj["spec"]["selector"]["matchLabels"]
    services = [o for o in objs if o["kind"] == "Service" and selector.items() <= o["metadata"]["labels"].items()]
    assert len(services) == 1, "the ServiceMonitor must select the one metrics Service"
    assert obj["spec"]["namespaceSelector"]["matchNames"] == [services[0]["metadata"]["namespace"]]
    names = {p["name"] for p in services[0]["spec"]["ports"]}
    assert all(e["port"] in names and e["path"] == "/metrics" for e in obj["spec"]["endpoints"])


def _check_prometheus_rule(obj: dict, objs: list[dict]) -> None:
    check_rule_groups(obj["spec"])


_CHECKS = {
    "ClusterRole": _check_rules,
    "Role": _check_rules,
    "ClusterRoleBinding": _check_binding,
    "RoleBinding": _check_binding,
    "Deployment": _check_deployment,
    "Service": _check_service,
    "Secret": _check_secret,
    "PodDisruptionBudget": _check_pdb,
    "NetworkPolicy": _check_network_policy,
    "ServiceMonitor": _check_service_monitor,
    "PrometheusRule": _check_prometheus_rule,
}


# ---- the Deployment: security, probes, args -------------------------------------------------------
def container(objs: list[dict]) -> dict[str, Any]:
    return one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def router_args(objs: list[dict]) -> list[str]:
    """The router's arguments: ``args``, or kube-eventer's ``command: ["/kube-eventer", ...]``."""
    c = container(objs)
    if "command" in c:
        assert c["command"][0] == "/kube-eventer" and "args" not in c
        return list(c["command"][1:])
    return list(c["args"])


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
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/var/lib/eventrouter", "/tmp"}
    args = run_parser().parse_args(router_args(objs))
    assert args.leader_elect is True
    assert args.healthz_port == 8084
    if "command" not in c:  # kube-eventer's command line relies on the image's EVENTROUTER_LOG_FORMAT=json
        assert args.log_format == "json"
    # the Lease holder's identity and the namespace of the Lease and checkpoint
    assert {e["name"] for e in c["env"]} >= {"POD_NAME", "POD_NAMESPACE"}


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
    flags = run_parser().parse_args(router_args(objs)).sink
    for flag in flags:
        for var in re.findall(r"\$\{?(\w+)", flag):
            assert var in declared, f"{flag} uses ${var}, which neither env nor the Secret defines"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
        assert value not in " ".join(router_args(objs))
    for flag in flags:
        sink = build_sink(flag)
        for value in env.values():
            assert value not in repr(sink)  # the flag is shown masked
    return flags


# ---- plain manifests ------------------------------------------------------------------------------
def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    files = sorted(p.name for p in DEPLOY.glob("*.yaml") if p.name not in ("kustomization.yaml", "secret.example.yaml"))
    assert sorted(kustomization["resources"]) == files
    assert kustomization["namespace"] == "eventrouter"
    for folder in (DEPLOY, KUBE_EVENTER):
        image = container(plain_objects(folder))["image"]
        assert any(
            image.startswith(i["name"] + ":")
            for i in yaml.safe_load((folder / "kustomization.yaml").read_text())["images"]
        )


def test_plain_manifests_are_valid_and_hardened(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = plain_objects()
    assert {o["kind"] for o in objs} == {
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "PodDisruptionBudget",
        "Service",
    }
    validate(objs)
    check_hardening(objs)
    # applied as it is, it sends nowhere: the log sink only (no placeholder token is ever posted)
    assert check_sinks_build(objs, monkeypatch) == ["log"]
    # the Secret is optional: the pod starts without it
    assert container(objs)["envFrom"] == [{"secretRef": {"name": "eventrouter-sinks", "optional": True}}]


def test_the_documented_dingtalk_line_works_with_the_secret_example(monkeypatch: pytest.MonkeyPatch) -> None:
    """Uncommenting the DingTalk example and applying secret.example.yaml gives a working sink."""
    text = (DEPLOY / "deployment.yaml").read_text()
    commented = re.findall(r"^(\s*)# (- --sink=dingtalk:\S+)$", text, re.M)
    assert len(commented) == 1
    indent, line = commented[0]
    enabled = text.replace(f"{indent}# {line}", f"{indent}{line}")
    secret = yaml.safe_load((DEPLOY / "secret.example.yaml").read_text())
    objs = [o for o in plain_objects() if o["kind"] != "Deployment"] + [yaml.safe_load(enabled), secret]
    validate(objs)
    flags = check_sinks_build(objs, monkeypatch)
    assert flags[0] == "log" and flags[1].startswith("dingtalk:") and "$DINGTALK_TOKEN" in flags[1]
    assert secret["metadata"]["name"] == container(objs)["envFrom"][0]["secretRef"]["name"]


def test_kube_eventer_overlay_keeps_its_service_account_and_command(monkeypatch: pytest.MonkeyPatch) -> None:
    objs = plain_objects(KUBE_EVENTER)
    assert "ServiceAccount" not in {o["kind"] for o in objs}  # it uses the one kube-eventer made
    validate([*objs, KUBE_EVENTER_SA])
    check_hardening(objs)
    deployment = one(objs, "Deployment")
    # kube-eventer's Deployment, updated in place: its name, namespace, selector and ServiceAccount
    assert (deployment["metadata"]["namespace"], deployment["metadata"]["name"]) == ("kube-system", "kube-eventer")
    assert deployment["spec"]["selector"]["matchLabels"] == {"app": "kube-eventer"}
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "kube-eventer"
    assert container(objs)["command"][:2] == ["/kube-eventer", "--source=kubernetes:https://kubernetes.default"]
    assert check_sinks_build(objs, monkeypatch) == ["log"]
    # the RBAC is bound to kube-system/kube-eventer and grants the Lease and the checkpoint ConfigMap there
    granted = rules_of([*objs, KUBE_EVENTER_SA])
    assert ("kube-system", "coordination.k8s.io", "leases", "update", "eventrouter") in granted
    assert ("kube-system", "", "configmaps", "update", "eventrouter-checkpoint") in granted
    assert ("kube-system", "", "configmaps", "create", None) in granted
    # the same rights as deploy/, in kube-system instead of eventrouter
    assert {(s.replace("kube-system", "eventrouter"), *rest) for s, *rest in granted} == rules_of(plain_objects())


# ---- Helm chart -----------------------------------------------------------------------------------
def test_chart_lints_clean() -> None:
    helm_lint()
    helm_lint(**ALL_FEATURES)


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
        "PodDisruptionBudget",
    }
    validate(objs)
    check_hardening(objs)
    assert check_sinks_build(objs, monkeypatch) == ["log"]
    assert container(objs)["image"] == "ghcr.io/eventrouter/eventrouter:0.1.0"  # appVersion by default
    # the chart and the plain manifests grant the same permissions
    assert rules_of(objs) == rules_of(plain_objects())
    assert one(objs, "PodDisruptionBudget")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": one(objs, "Deployment")["spec"]["selector"]["matchLabels"]},
    }
    assert "annotations" not in one(objs, "ServiceAccount")["metadata"]


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


ALL_FEATURES: dict[str, Any] = {
    "serviceAccount": {
        "annotations": {
            "eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/eventrouter",
            "iam.gke.io/gcp-service-account": "eventrouter@proj.iam.gserviceaccount.com",
        },
        "labels": {"azure.workload.identity/use": "true"},
    },
    "podLabels": {"azure.workload.identity/use": "true"},
    "env": [{"name": "TZ", "value": "Asia/Shanghai"}],
    "envFrom": [{"secretRef": {"name": "kafka-credentials"}}, {"configMapRef": {"name": "eventrouter-settings"}}],
    "secretEnv": {"DINGTALK_TOKEN": "tok-123456"},
    "extraVolumes": [{"name": "templates", "configMap": {"name": "eventrouter-templates"}}],
    "extraVolumeMounts": [{"name": "templates", "mountPath": "/etc/eventrouter/templates", "readOnly": True}],
    "serviceMonitor": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
    "grafanaDashboard": {"enabled": True},
    "networkPolicy": {
        "enabled": True,
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "egress": [{"ports": [{"port": 53, "protocol": "UDP"}, {"port": 443, "protocol": "TCP"}]}],
    },
}


def test_chart_with_every_optional_object() -> None:
    objs = helm_objects(**ALL_FEATURES)
    validate(objs)
    check_hardening(objs)
    kinds = {o["kind"] for o in objs}
    assert {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "PodDisruptionBudget", "ConfigMap", "Secret"} <= kinds
    # workload identity: the annotations and labels are on the ServiceAccount the pod runs as
    sa = one(objs, "ServiceAccount")
    assert sa["metadata"]["annotations"] == ALL_FEATURES["serviceAccount"]["annotations"]
    assert sa["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    pod = one(objs, "Deployment")["spec"]["template"]
    assert pod["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    assert pod["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    c = container(objs)
    # env after the downward-API pair; the chart's Secret first in envFrom, then the extra sources
    assert [e["name"] for e in c["env"]] == ["POD_NAME", "POD_NAMESPACE", "TZ"]
    assert c["envFrom"] == [{"secretRef": {"name": "eventrouter-sinks"}}, *ALL_FEATURES["envFrom"]]
    assert ALL_FEATURES["extraVolumes"][0] in pod["spec"]["volumes"]
    assert ALL_FEATURES["extraVolumeMounts"][0] in c["volumeMounts"]
    # the monitoring objects carry the Prometheus's selector label and the shipped content
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert one(objs, kind)["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert one(objs, "PrometheusRule")["spec"] == yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    dashboard = one(objs, "ConfigMap")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["eventrouter.json"]) == json.loads(
        (CHART / "files" / "dashboard.json").read_text()
    )
    policy = one(objs, "NetworkPolicy")["spec"]
    assert policy["ingress"][0]["from"] == ALL_FEATURES["networkPolicy"]["metricsFrom"]
    assert policy["egress"] == ALL_FEATURES["networkPolicy"]["egress"]


def test_chart_network_policy_without_egress_rules_leaves_egress_open() -> None:
    policy = one(helm_objects(networkPolicy={"enabled": True}), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress"] and "egress" not in policy
    assert "from" not in policy["ingress"][0]  # metrics from anywhere


def test_chart_refuses_a_service_monitor_without_the_service() -> None:
    with pytest.raises(helm_python.HelmError, match=r"serviceMonitor\.enabled needs service\.enabled"):
        helm_render(serviceMonitor={"enabled": True}, service={"enabled": False})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"serviceAcount": {"create": False}}, "additional properties 'serviceAcount' not allowed"),
        ({"serviceAccount": {"anotations": {"a": "b"}}}, "additional properties 'anotations' not allowed"),
        ({"serviceMonitor": {"enable": True}}, "additional properties 'enable' not allowed"),
        ({"replicaCount": "2"}, "got string, want integer"),
        ({"shutdownTimeout": "30 seconds"}, "does not match pattern"),
        ({"secretEnv": {"DINGTALK-TOKEN": "x"}}, "DINGTALK-TOKEN"),
        ({"logFormat": "yaml"}, "logFormat"),
    ],
)
def test_chart_values_schema_refuses_misspelt_or_mistyped_values(values: dict[str, Any], message: str) -> None:
    """values.schema.json: a typo fails the install instead of being silently ignored."""
    with pytest.raises(helm_python.HelmValuesError, match=re.escape(message)):
        helm_render(**values)


def test_chart_keeps_kube_eventers_service_account(monkeypatch: pytest.MonkeyPatch) -> None:
    """``-n kube-system --set serviceAccount.create=false --set serviceAccount.name=kube-eventer``"""
    objs = helm_objects(namespace="kube-system", serviceAccount={"create": False, "name": "kube-eventer"})
    assert "ServiceAccount" not in {o["kind"] for o in objs}
    validate([*objs, KUBE_EVENTER_SA])
    assert one(objs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == "kube-eventer"
    for binding in (o for o in objs if o["kind"].endswith("Binding")):
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "kube-eventer", "namespace": "kube-system"}]
    assert rules_of(objs) == rules_of(plain_objects(KUBE_EVENTER))
    assert run_parser().parse_args(container(objs)["args"]).checkpoint == "configmap:kube-system/eventrouter-checkpoint"


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
        if parsed.checkpoint is None:  # in a pod the default is the ConfigMap; here the source uses a kubeconfig
            kind, where = parse_checkpoint_flag(None, in_cluster=True, namespace=os.environ["POD_NAMESPACE"])
            parsed.checkpoint = f"{kind}:{where}"
        self.stop = threading.Event()
        # the cluster address and credentials differ from in-cluster; everything else is the manifest's
        self.config = replace(
            run_config(parsed),
            source=f"kubernetes:?inClusterConfig=false&auth={kubeconfig}{source_query}",
            sinks=[f"jsonfile:{out}"],
            healthz_ip="127.0.0.1",
            healthz_port=self.port,
            shutdown_timeout=5.0,
            data_dir=str(out.parent / f"data-{self.port}"),  # each replica its own volume, as each pod has
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
def sim(tmp_path: Path) -> Iterator[tuple[Simulator, Path]]:
    simulator = Simulator(list(real_objects()[:100])).start()
    simulator.faults.bookmark_interval = 0.2
    try:
        yield simulator, simulator.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        simulator.stop()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("folder", "namespace", "extra"),
    [(DEPLOY, "eventrouter", []), (KUBE_EVENTER, "kube-system", [KUBE_EVENTER_SA])],
    ids=["deploy", "kube-eventer"],
)
def test_rbac_covers_exactly_what_two_replicas_call(
    sim: tuple[Simulator, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    folder: Path,
    namespace: str,
    extra: list[dict],
) -> None:
    simulator, kubeconfig = sim
    monkeypatch.setenv("POD_NAMESPACE", namespace)  # as the Deployment's downward API sets it
    objs = [*plain_objects(folder), *extra]
    args = router_args(objs)
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
        # the checkpoint age is exported from the start now; wait for the first write itself
        wait_for(lambda: ("ConfigMap", namespace, "eventrouter-checkpoint") in simulator.store.objects, "a checkpoint")
        # one event after the first checkpoint write: the position moves and the ConfigMap is updated
        simulator.add_event()
        wait_for(lambda: leader.metric("eventrouter_sink_events_sent_total") == 101, "the 101st event")
        wait_for(
            lambda: any(r.verb == "update" and "/configmaps/" in r.path for r in list(simulator.request_log)),
            "a checkpoint update",
        )
    finally:
        a.finish()
        b.finish()
    assert len(out.read_text().splitlines()) == 101  # one replica delivered, once
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
    assert {(c[2], c[4]) for c in calls if c[0] == namespace and c[4]} == {
        ("leases", "eventrouter"),
        ("configmaps", "eventrouter-checkpoint"),
    }


# ---- the dashboard and the alerts ---------------------------------------------------------------------
_SUFFIXES = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}
_FAMILY_TYPES = {"CounterMetricFamily": "counter", "GaugeMetricFamily": "gauge", "HistogramMetricFamily": "histogram"}


def exported_metrics() -> set[str]:
    """Every sample name the router's /metrics can carry, read from eventrouter/ itself: what its
    collector (eventrouter/metrics.py) yields for a bare router, plus every metric family created
    with a literal name anywhere in the package (those yielded only with a chat sink or --enrich)."""
    state = SourceState()
    state.checkpoint_written = time.time()  # the checkpoint age is exported once a checkpoint was written
    names = set()
    for family in RouterCollector(Router([]), state).collect():
        names |= {family.name + suffix for suffix in _SUFFIXES[family.type]}
    for path in (ROOT / "eventrouter").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in _FAMILY_TYPES and node.args:
                first = node.args[0]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    kind = _FAMILY_TYPES[node.func.id]
                    names |= {first.value + suffix for suffix in _SUFFIXES[kind]}
    assert len(names) > 15 and "eventrouter_sink_events_sent_total" in names
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (it must parse)."""
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            assert node.name, f"a selector without a metric name in {expr!r}"
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), pre_visit=visit)
    assert names, expr
    return names


def check_rule_groups(spec: dict[str, Any]) -> None:
    """A Prometheus rule file's ``groups``: the structure promtool checks, and every expression."""
    assert set(spec) == {"groups"}
    exported = exported_metrics()
    seen = set()
    for group in spec["groups"]:
        assert group["name"] and group["rules"]
        for rule in group["rules"]:
            assert set(rule) <= {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}, rule
            assert re.fullmatch(r"[A-Z][A-Za-z0-9]+", rule["alert"]) and rule["alert"] not in seen
            seen.add(rule["alert"])
            assert metric_names(rule["expr"]) <= exported, rule["expr"]
            if "for" in rule:
                assert re.fullmatch(r"\d+[smh]", rule["for"])
            assert rule["labels"]["severity"] in {"warning", "critical"}
            assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_alert_rules_parse_and_use_only_exported_metrics() -> None:
    alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    check_rule_groups(alerts)
    # deploy/monitoring/ ships the same rules
    monitoring = plain_objects(MONITORING)
    assert one(monitoring, "PrometheusRule")["spec"] == alerts
    validate([*monitoring, *plain_objects()])
    # docs/operations.md lists the same alerts with the same expressions
    documented = re.findall(r"^- alert: (\w+).*\n\s+expr: (.+)$", (ROOT / "docs" / "operations.md").read_text(), re.M)
    rules = {r["alert"]: r["expr"] for g in alerts["groups"] for r in g["rules"]}
    assert dict(documented) == rules


def test_metric_names_reads_selectors_and_rejects_what_does_not_parse() -> None:
    assert metric_names('sum by (sink) (rate(a_total{job=~"x"}[5m])) / b') == {"a_total", "b"}
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        metric_names("rate(a_total[5m]")
    assert "eventrouter_sink_batch_duration_seconds_bucket" in exported_metrics()


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    queries += [v["definition"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return queries


def test_grafana_dashboard_is_valid_and_queries_only_exported_metrics() -> None:
    dashboard = json.loads((CHART / "files" / "dashboard.json").read_text())
    assert json.loads((MONITORING / "grafana-dashboard.json").read_text()) == dashboard  # one dashboard, two places
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    exported = exported_metrics()
    used = set()
    for panel in dashboard["panels"]:
        box = panel["gridPos"]
        assert box["x"] + box["w"] <= 24 and box["h"] > 0
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"]
        for target in panel["targets"]:
            assert set(re.findall(r"\$(\w+)", target["expr"])) - {"__rate_interval"} <= variables
    for query in dashboard_queries(dashboard):
        label_values = re.fullmatch(r"label_values\((\w+), *\w+\)", query)
        expr = label_values.group(1) if label_values else query.replace("$__rate_interval", "5m")
        names = metric_names(expr)
        assert names <= exported, f"{query}: {names - exported} is not exported by the router"
        used |= names
    # every metric family appears on the dashboard (a new metric needs a panel)
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert families - shown == set(), (
        f"metrics without a panel: {sorted(families - shown)}; add one to deploy/helm/eventrouter/files/"
        "dashboard.json and copy the file to deploy/monitoring/grafana-dashboard.json"
    )
