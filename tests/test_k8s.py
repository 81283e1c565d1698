"""Static checks of the Kubernetes base (deploy/k8s); no cluster and no network needed.

Every object — the listed resources and the ConfigMaps/Secrets the kustomization generates, built here the way
kustomize builds them — validates against the Kubernetes JSON schemas shipped by the ``kubernetes-validate``
package (strict: unknown fields are errors), for the oldest and a recent Kubernetes version we support. Then
what kustomize and the API server would only notice at apply or run time: every ConfigMap, Secret, key,
volume, port and Service a pod names exists; selectors select; the flows' start script computes the right
-i/-a; the alerts config renders from the ConfigMap and Secret and loads; the rule pack and tables load.
"""

from __future__ import annotations

import base64
import copy
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
VERSIONS = ("1.28", "1.34")
Doc = dict[str, Any]


# --- kustomize, the parts this base uses --------------------------------------------------------------------


@cache
def kustomization() -> Doc:
    doc = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert doc["apiVersion"] == "kustomize.config.k8s.io/v1beta1" and doc["kind"] == "Kustomization"
    assert isinstance(doc, dict)
    return doc


def env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and line[0] != "#")
    return {k.strip(): v for k, v in pairs}


def generated(kind: str, spec: Doc) -> Doc:
    data: dict[str, str] = {}
    for name in spec.get("envs", []):
        data.update(env_file(K8S / name))
    for name in spec.get("files", []):
        data[Path(name).name] = (K8S / name).read_text()
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    doc: Doc = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if kind == "Secret":
        doc["type"] = "Opaque"
        doc["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        doc["data"] = data
    return doc


def load_resources(paths: list[str]) -> list[Doc]:
    docs: list[Doc] = []
    for rel in paths:
        docs += [d for d in yaml.safe_load_all((K8S / rel).read_text()) if d]
    return docs


def build() -> list[Doc]:
    """What `kustomize build deploy/k8s` gives, minus name hashes (references are checked by base name)."""
    k = kustomization()
    docs = load_resources(k["resources"])
    docs += [generated("ConfigMap", g) for g in k.get("configMapGenerator", [])]
    docs += [generated("Secret", g) for g in k.get("secretGenerator", [])]
    return docs


def by_kind(docs: list[Doc], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[Doc]) -> Iterator[tuple[str, Doc, Doc]]:
    """(workload name, workload, pod template) of every workload."""
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job", "DaemonSet"):
            yield d["metadata"]["name"], d, d["spec"]["template"]


def containers(pod: Doc) -> list[Doc]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def env_of(container: Doc) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


# --- the base is what kustomize and the schemas accept ------------------------------------------------------


def test_kustomization_lists_every_manifest_and_its_files_exist() -> None:
    k = kustomization()
    listed = set(k["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk, "every manifest of the base is a resource, and every resource exists"
    for g in [*k["configMapGenerator"], *k["secretGenerator"]]:
        for rel in [*g.get("envs", []), *g.get("files", [])]:
            assert (K8S / rel).is_file(), rel
            assert not Path(rel).is_absolute() and ".." not in Path(rel).parts, (
                "kustomize loads only below the base"
            )
    names = [(d["kind"], d["metadata"]["name"]) for d in build()]
    assert len(names) == len(set(names)), "two objects with one kind and name"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_validates_against_the_kubernetes_schemas(version: str) -> None:
    docs = build() + load_resources([f"examples/{p.name}" for p in (K8S / "examples").glob("*.yaml")])
    for doc in docs:
        where = f"{doc['kind']}/{doc['metadata']['name']}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where} (Kubernetes {version}): {'.'.join(map(str, exc.path))}: {exc.message}")


@pytest.mark.parametrize(
    ("kind", "name", "path", "value"),
    [
        ("StatefulSet", "enrich-flow", ["spec", "replica"], 2),  # misspelt field
        (
            "Deployment",
            "api",
            ["spec", "template", "spec", "containers", 0, "ports", 0, "containerPort"],
            "8000",
        ),
        ("Service", "enrich-flow", ["spec", "ports", 0, "port"], "2101"),
    ],
)
def test_the_schema_check_catches_broken_objects(
    kind: str, name: str, path: list[str | int], value: Any
) -> None:
    doc = copy.deepcopy(by_kind(build(), kind)[name])
    target: Any = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[-1], strict=True)


# --- references resolve -------------------------------------------------------------------------------------


def reference_problems(docs: list[Doc]) -> list[str]:
    """Names a pod uses that the base does not define (ConfigMaps, Secrets, keys, volumes, ports...)."""
    maps, secrets = by_kind(docs, "ConfigMap"), by_kind(docs, "Secret")
    services = by_kind(docs, "Service")
    problems: list[str] = []

    def need(kind: str, name: str, key: str | None, where: str) -> None:
        found = (maps if kind == "ConfigMap" else secrets).get(name)
        if found is None:
            problems.append(f"{where}: {kind} {name} is not in the base")
        elif key is not None and key not in found.get("data", {}):
            problems.append(f"{where}: {kind} {name} has no key {key}")

    for wname, workload, pod in pod_specs(docs):
        spec = pod["spec"]
        labels = pod["metadata"].get("labels", {})
        selector = workload["spec"].get("selector", {}).get("matchLabels", {})
        if not selector.items() <= labels.items():
            problems.append(f"{wname}: selector {selector} does not select its pods {labels}")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        claims = {c["metadata"]["name"] for c in workload["spec"].get("volumeClaimTemplates", [])}
        for v in volumes.values():
            if "configMap" in v:
                need("ConfigMap", v["configMap"]["name"], None, f"{wname} volume {v['name']}")
            if "secret" in v:
                need("Secret", v["secret"]["secretName"], None, f"{wname} volume {v['name']}")
        for c in containers(pod):
            where = f"{wname}/{c['name']}"
            for src in c.get("envFrom", []):
                if "configMapRef" in src:
                    need("ConfigMap", src["configMapRef"]["name"], None, where)
                if "secretRef" in src:
                    need("Secret", src["secretRef"]["name"], None, where)
            for e in c.get("env", []):
                ref = e.get("valueFrom", {})
                if "configMapKeyRef" in ref:
                    need("ConfigMap", ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"], where)
                if "secretKeyRef" in ref:
                    need("Secret", ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"], where)
            for m in c.get("volumeMounts", []):
                if m["name"] not in volumes and m["name"] not in claims:
                    problems.append(f"{where}: mounts undefined volume {m['name']}")
            ports = {p.get("name") for p in c.get("ports", [])} | {
                p["containerPort"] for p in c.get("ports", [])
            }
            for probe_name in ("readinessProbe", "livenessProbe", "startupProbe"):
                probe = c.get(probe_name, {})
                port = probe.get("httpGet", probe.get("tcpSocket", {})).get("port")
                if port is not None and port not in ports:
                    problems.append(f"{where}: {probe_name} uses port {port} the container does not declare")
        if workload["kind"] == "StatefulSet":
            svc = services.get(workload["spec"]["serviceName"])
            if svc is None or svc["spec"].get("clusterIP") != "None":
                problems.append(f"{wname}: serviceName is not a headless Service of the base")
            elif not svc["spec"]["selector"].items() <= labels.items():
                problems.append(f"{wname}: its headless Service does not select its pods")
    for sname, svc in services.items():
        selected = [
            w
            for w, _, pod in pod_specs(docs)
            if svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
        ]
        if not selected:
            problems.append(f"Service {sname} selects no pods")
        for port in svc["spec"]["ports"]:
            target = port.get("targetPort", port["port"])
            declared = {
                p.get("name") if isinstance(target, str) else p["containerPort"]
                for w, _, pod in pod_specs(docs)
                if w in selected
                for c in pod["spec"]["containers"]
                for p in c.get("ports", [])
            }
            if target not in declared:
                problems.append(f"Service {sname}: targetPort {target} is not a port of its pods")
    return problems


def test_every_name_a_pod_uses_exists_in_the_base() -> None:
    assert reference_problems(build()) == []


def test_the_reference_check_catches_a_missing_configmap_and_key() -> None:
    docs = build()
    api = by_kind(docs, "Deployment")["api"]
    api["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] = "enrich-tabels"
    api["spec"]["template"]["spec"]["containers"][0]["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "enrich-smtp", "key": "NO_SUCH_KEY"}}}
    )
    problems = reference_problems(docs)
    assert "api volume tables: ConfigMap enrich-tabels is not in the base" in problems
    assert "api/api: Secret enrich-smtp has no key NO_SUCH_KEY" in problems


def test_images_are_the_one_kustomize_rewrites() -> None:
    (image,) = kustomization()["images"]
    for wname, _, pod in pod_specs(build()):
        for c in containers(pod):
            assert c["image"] == image["name"], f"{wname}/{c['name']}"
            assert c["securityContext"]["allowPrivilegeEscalation"] is False
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True, wname


# --- what the pods do ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("flow", ["snapshot", "enrich"])
def test_flow_pods_are_one_bytewax_process_each(flow: str, tmp_path: Path) -> None:
    docs = build()
    name = f"{flow}-flow"
    sts = by_kind(docs, "StatefulSet")[name]
    svc = by_kind(docs, "Service")[name]
    assert sts["spec"]["podManagementPolicy"] == "Parallel", "peers wait for each other: start them together"
    assert svc["spec"]["publishNotReadyAddresses"] is True, "peers must resolve each other before ready"
    (container,) = sts["spec"]["template"]["spec"]["containers"]
    env = env_of(container)
    assert env["PROCESSES"] == str(sts["spec"]["replicas"]), "the address list must name every replica"
    assert env["ENRICH_STATE_DIR"] in {
        m["mountPath"] for m in container["volumeMounts"] if m["name"] == "recovery"
    }
    assert env["ENRICH_METRICS_HOST"] == "0.0.0.0", "probes reach the metrics endpoint on the pod address"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert str(ports["cluster"]) == env["CLUSTER_PORT"]

    # Run the container's start script with a stand-in `enrich` that prints its arguments.
    stub = tmp_path / "enrich"
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done\n')
    stub.chmod(stub.stat().st_mode | stat.S_IEXEC)
    run_env = {
        **env,
        "PATH": f"{tmp_path}:{os.environ['PATH']}",
        "POD_NAME": f"{name}-1",
        "POD_NAMESPACE": "fleet",
    }
    script = [*container["command"], *container["args"]]
    out = subprocess.run(script, env=run_env, capture_output=True, text=True, check=True).stdout.splitlines()
    addresses = ";".join(
        f"{name}-{i}.{name}.fleet.svc:{ports['cluster']}" for i in range(sts["spec"]["replicas"])
    )
    assert out == ["flow", flow, "-i", "1", "-a", addresses]


def test_alerts_config_renders_from_configmap_and_secret_and_loads(tmp_path: Path) -> None:
    docs = build()
    alerts = by_kind(docs, "Deployment")["alerts"]
    # high availability: two replicas (one active by the lease), rolled one at a time, one kept on drains
    assert alerts["spec"]["replicas"] == 2 and alerts["spec"]["strategy"]["type"] == "RollingUpdate"
    assert by_kind(docs, "PodDisruptionBudget")["alerts"]["spec"]["minAvailable"] == 1
    pod = alerts["spec"]["template"]
    (init,) = pod["spec"]["initContainers"]
    (main,) = pod["spec"]["containers"]
    env: dict[str, str] = {}
    for src in init["envFrom"]:
        if "configMapRef" in src:
            env.update(by_kind(docs, "ConfigMap")[src["configMapRef"]["name"]]["data"])
        else:
            data = by_kind(docs, "Secret")[src["secretRef"]["name"]]["data"]
            env.update({k: base64.b64decode(v).decode() for k, v in data.items()})
    env["OPS_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(b"k" * 32).decode()  # what an overlay provides
    template_dir = tmp_path / "template"
    template_dir.mkdir()
    (template_dir / "alerts.yaml").write_text(
        by_kind(docs, "ConfigMap")["enrich-alerts"]["data"]["alerts.yaml"]
    )
    cmd = [sys.executable if c == "python" else c for c in init["command"]]
    cmd[-2:] = [str(template_dir / "alerts.yaml"), str(tmp_path / "alerts.yaml")]
    subprocess.run(cmd, env=env, check=True)
    rendered = (tmp_path / "alerts.yaml").read_text()
    assert "${" not in rendered and env["OPS_WEBHOOK_URL"] in rendered
    assert env_of(main)["ENRICH_ALERTS_CONFIG"] == init["command"][-1]
    check_env = {**os.environ, "ENRICH_ALERTS_CONFIG": str(tmp_path / "alerts.yaml")}
    check = subprocess.run([sys.executable, "-m", "cli.main", "alerts", "check"], env=check_env,
                           capture_output=True, text=True, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    # A missing key fails the init container instead of starting a worker with a half-filled config.
    del env["OPS_WEBHOOK_SECRET"]
    assert subprocess.run(cmd, env=env, capture_output=True, check=False).returncode != 0


def test_rules_and_tables_configmaps_load() -> None:
    cmd = [sys.executable, "-m", "cli.main", "rules", "check", str(K8S / "config/rules.yaml")]
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    from enrich.tables import load_tables

    assert set(load_tables(K8S / "config/tables.yaml")) == {"carinfo", "deviceinfo", "reservation"}
    config = env_file(K8S / "config/enrich.env")
    mounts = {
        m["mountPath"]
        for _, _, pod in pod_specs(build())
        for c in containers(pod)
        for m in c.get("volumeMounts", [])
    }
    for key in ("ENRICH_TABLES_FILE", "ENRICH_RULES_FILE"):
        assert str(Path(config[key]).parent) in mounts, key


def test_api_is_ready_only_when_readyz_says_so() -> None:
    api = by_kind(build(), "Deployment")["api"]
    (c,) = api["spec"]["template"]["spec"]["containers"]
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert env_of(c)["ENRICH_API_HOST"] == "0.0.0.0"
    assert api["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
