"""The Helm chart, rendered by the real Helm library (helm-python-sdk embeds it; no helm binary, no
cluster): `helm lint --strict` and `helm template` under the default values and realistic value
files (tests/fixtures/chart/), every object validated against the Kubernetes API schemas of each
version the chart claims (kubernetes-validate), and the properties an install depends on."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from lodestar.services.settings import Settings

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (the test extra) embeds the Helm library")
kv = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "lodestar"
FIXTURES = ROOT / "tests" / "fixtures" / "chart"
SCENARIOS = {"default": {}} | {p.stem: yaml.safe_load(p.read_text()) for p in sorted(FIXTURES.glob("*.yaml"))}
# Objects of CRDs the Kubernetes schemas do not hold (cert-manager, Prometheus Operator, KEDA).
CRDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("keda.sh/v1alpha1", "TriggerAuthentication"),
}
SETTINGS = {f"LODESTAR_{name.upper()}" for name in Settings.model_fields}


def claimed_versions() -> list[str]:
    """Every Kubernetes minor from the chart's kubeVersion floor to the newest schemas shipped."""
    floor = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    low = int(re.search(r">=\s*1\.(\d+)", floor).group(1))  # type: ignore[union-attr]
    high = int(kv.utils.latest_version().split(".")[1])
    return [f"1.{m}.0" for m in range(low, high + 1)]


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as c:
        yield c


def render(chart: Any, values: dict[str, Any], release: str = "rag") -> list[dict[str, Any]]:
    out = chart.render(values, name=release, namespace="search", is_install=True)
    docs = [d for name, text in sorted(out.items()) if name.endswith(".yaml") for d in yaml.safe_load_all(text)]
    return [d for d in docs if d]


def pods(objects: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(name, pod spec) of every workload and bare pod."""
    out = []
    for o in objects:
        if o["kind"] in ("Deployment", "StatefulSet"):
            out.append((o["metadata"]["name"], o["spec"]["template"]["spec"]))
        elif o["kind"] == "Pod":
            out.append((o["metadata"]["name"], o["spec"]))
    return out


def find(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert matches, f"no {kind} {name}: {[(o['kind'], o['metadata']['name']) for o in objects]}"
    return matches[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_lint_strict(scenario: str) -> None:
    report = helm.lint(CHART, SCENARIOS[scenario], strict=True, namespace="search")
    assert not report["errors"] and not report["messages"], report


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_is_valid_on_every_claimed_kubernetes(chart: Any, scenario: str) -> None:
    objects = render(chart, SCENARIOS[scenario])
    versions = claimed_versions()
    assert versions[0] == "1.27.0" and len(versions) >= 5
    for o in objects:
        if (o["apiVersion"], o["kind"]) in CRDS:
            assert o["metadata"]["name"] and o["spec"]
            continue
        for version in versions:
            try:
                kv.validate(o, version, strict=True)
            except kv.ValidationError as exc:
                raise AssertionError(f"{scenario}: {o['kind']} {o['metadata']['name']} on {version}: {exc}") from None
        assert len(o["metadata"]["name"]) <= 63


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_pods_run_as_numeric_non_root_with_a_read_only_root(chart: Any, scenario: str) -> None:
    for name, spec in pods(render(chart, SCENARIOS[scenario])):
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        for c in spec.get("initContainers", []) + spec["containers"]:
            sc = {**pod_sc, **c.get("securityContext", {})}
            where = f"{scenario}: {name}/{c['name']}"
            assert sc.get("runAsNonRoot") is True and isinstance(sc.get("runAsUser"), int) and sc["runAsUser"] > 0, (
                where
            )
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("allowPrivilegeEscalation") is False and sc["capabilities"]["drop"] == ["ALL"], where
        if "redis" not in name:
            assert pod_sc.get("fsGroup") == 10001, f"{name}: a fresh volume must be writable by the image's user"
            mounts = {m["mountPath"] for c in spec["containers"] for m in c.get("volumeMounts", [])}
            assert {"/tmp", "/home/lodestar"} <= mounts, f"{name}: the process writes there"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_lodestar_variable_is_a_setting(chart: Any, scenario: str) -> None:
    for name, spec in pods(render(chart, SCENARIOS[scenario])):
        for c in spec["containers"]:
            unknown = {k for k in env_of(c) if k.startswith("LODESTAR_")} - SETTINGS
            assert not unknown, f"{name} sets {sorted(unknown)}, which services/settings.py does not declare"


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_long_running_container_is_probed(chart: Any, scenario: str) -> None:
    for name, spec in pods(render(chart, SCENARIOS[scenario] | {"embed": {"enabled": True}})):
        for c in spec["containers"]:
            if name.endswith("test-health"):
                continue
            needed = {"livenessProbe"} if c["name"] == "redis" else {"startupProbe", "livenessProbe"}
            if c["name"] in ("server", "embed", "redis"):
                needed.add("readinessProbe")  # Services send calls only to ready pods
            assert needed <= set(c), f"{scenario}: {name}/{c['name']} lacks {sorted(needed - set(c))}"


def test_server_statefulset_probes_and_headless_service(chart: Any) -> None:
    objects = render(chart, {})
    sts = find(objects, "StatefulSet", "rag-lodestar")
    governing = find(objects, "Service", sts["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"
    assert find(objects, "Service", "rag-lodestar")["spec"].get("clusterIP") != "None"
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (server,) = sts["spec"]["template"]["spec"]["containers"]
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[kind]["grpc"]["port"] == 50051
    assert server["image"] == "lodestar:" + yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    env = env_of(server)
    assert env["LODESTAR_BROKER_URL"] == "redis://:$(REDIS_PASSWORD)@rag-lodestar-redis:6379/0"
    assert list(env).index("REDIS_PASSWORD") < list(env).index("LODESTAR_BROKER_URL")  # $(...) sees it
    # threads follow the container's CPU limit, not the node's cores
    assert env["LODESTAR_TORCH_THREADS"]["resourceFieldRef"]["resource"] == "limits.cpu"
    assert env["OMP_NUM_THREADS"]["resourceFieldRef"]["containerName"] == "server"
    worker = find(objects, "Deployment", "rag-lodestar-worker")["spec"]["template"]["spec"]["containers"][0]
    assert worker["livenessProbe"]["exec"]["command"] == ["lodestar", "worker", "--ping"]
    assert "readinessProbe" not in worker and "grpc" not in json.dumps(worker)


def test_more_than_one_server_needs_a_shared_engine(chart: Any) -> None:
    with pytest.raises(helm.HelmError, match="server.replicas is 2.*milvus.uri"):
        render(chart, {"server": {"replicas": 2}})
    objects = render(chart, SCENARIOS["milvus"])
    sts = find(objects, "StatefulSet", "rag-lodestar")
    assert sts["spec"]["replicas"] == 3
    assert env_of(sts["spec"]["template"]["spec"]["containers"][0])["LODESTAR_MILVUS_URI"].startswith("http://milvus")


def test_query_replicas_serve_the_collections_in_milvus(chart: Any) -> None:
    with pytest.raises(helm.HelmError, match="query.enabled needs milvus.uri"):
        render(chart, {"query": {"enabled": True}})
    objects = render(chart, SCENARIOS["milvus"])
    query = find(objects, "Deployment", "rag-lodestar-query")
    container = query["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == [
        "serve",
        "--only",
        "embed,retrieve,compress,generate",
    ]  # no index: jobs stay on the server
    env = env_of(container)
    assert env["LODESTAR_MILVUS_URI"].startswith("http://milvus") and env["LODESTAR_MILVUS_ONLY"] == "true"
    assert "replicas" not in query["spec"]  # the HPA owns the count
    hpa = find(objects, "HorizontalPodAutoscaler", "rag-lodestar-query")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "rag-lodestar-query" and hpa["spec"]["maxReplicas"] == 10
    assert find(objects, "Service", "rag-lodestar-query-headless")["spec"]["clusterIP"] == "None"


def test_tls_tokens_and_cert_manager(chart: Any) -> None:
    objects = render(chart, SCENARIOS["tls-tokens"])
    cert = find(objects, "Certificate", "rag-lodestar-tls")
    assert {"rag-lodestar", "rag-lodestar-embed.search.svc", "rag-lodestar-embed-headless"} <= set(
        cert["spec"]["dnsNames"]
    )
    assert "client auth" in cert["spec"]["usages"]
    sts = find(objects, "StatefulSet", "rag-lodestar")["spec"]["template"]["spec"]
    assert sts["imagePullSecrets"] == [{"name": "registry-creds"}]
    (server,) = sts["containers"]
    env = env_of(server)
    assert env["LODESTAR_TLS_CERT"] == "/etc/lodestar/tls/tls.crt" and env["LODESTAR_TLS_CLIENT_CA"].endswith("ca.crt")
    assert env["LODESTAR_TOKENS_FILE"] == "/etc/lodestar/tokens/tokens.json"
    probe = server["readinessProbe"]["exec"]["command"]  # kubelet's gRPC probe cannot speak TLS
    assert probe[:4] == ["lodestar", "health", "--server", "127.0.0.1:50051"] and "rag-lodestar" in probe
    assert "--tls-cert" in probe  # mTLS: the probe presents the pod's certificate
    worker = find(objects, "Deployment", "rag-lodestar-worker")["spec"]["template"]["spec"]["containers"][0]
    wenv = env_of(worker)
    assert wenv["LODESTAR_TLS_CA"] == "/etc/lodestar/tls/ca.crt" and "LODESTAR_TLS_CERT" in wenv
    assert wenv["LODESTAR_WORKER_TOKEN"]["secretKeyRef"] == {"name": "rag-lodestar-tokens", "key": "worker-token"}
    tokens = find(objects, "Secret", "rag-lodestar-tokens")
    assert json.loads(__import__("base64").b64decode(tokens["data"]["tokens.json"]))[1]["scopes"] == ["worker"]
    test_pod = find(objects, "Pod", "rag-lodestar-test-health")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert [c["args"][:3] for c in test_pod["spec"]["containers"]] == [
        ["health", "--server", "rag-lodestar:50051"],
        ["health", "--server", "rag-lodestar-embed:50051"],
    ]


def test_existing_secrets_are_used_not_made(chart: Any) -> None:
    objects = render(chart, SCENARIOS["existing-secrets"])
    assert not [o for o in objects if o["kind"] == "Secret"]
    spec = find(objects, "StatefulSet", "rag-lodestar")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "lodestar-tls"
    assert volumes["tokens"]["secret"]["secretName"] == "lodestar-tokens"
    assert volumes["models"]["persistentVolumeClaim"]["claimName"] == "models"
    env = env_of(spec["containers"][0])
    assert env["REDIS_PASSWORD"]["secretKeyRef"] == {"name": "shared-redis", "key": "password"}
    assert env["LODESTAR_MODEL"] == "/models/smollm2" and env["LODESTAR_ADAPTER_DIRS"] == "/models/adapters"


def test_external_redis(chart: Any) -> None:
    objects = render(chart, SCENARIOS["external-redis"])
    assert not [o for o in objects if "redis" in o["metadata"]["name"]]
    worker = find(objects, "Deployment", "rag-lodestar-worker")
    assert worker["spec"]["replicas"] == 4
    url = env_of(worker["spec"]["template"]["spec"]["containers"][0])["LODESTAR_BROKER_URL"]
    assert url == "rediss://:$(REDIS_PASSWORD)@redis.cache.internal:6380/2"


def test_gpu_roles_run_the_cuda_image(chart: Any) -> None:
    objects = render(chart, SCENARIOS["cuda-nodes"])
    for kind, name in (("StatefulSet", "rag-lodestar"), ("Deployment", "rag-lodestar-worker")):
        spec = find(objects, kind, name)["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        assert c["image"] == "lodestar:0.1.0-cuda" and c["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert env_of(c)["LODESTAR_DEVICE"] == "cuda" and spec["runtimeClassName"] == "nvidia"
        assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    server = find(objects, "StatefulSet", "rag-lodestar")["spec"]["template"]["spec"]
    assert server["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    cpu_only = render(chart, {"embed": {"enabled": True}})
    embed = find(cpu_only, "Deployment", "rag-lodestar-embed")["spec"]["template"]["spec"]["containers"][0]
    assert embed["image"] == "lodestar:0.1.0" and "LODESTAR_DEVICE" not in env_of(embed)


def test_autoscaling_keda_and_disruption_budgets(chart: Any) -> None:
    objects = render(chart, SCENARIOS["keda"])
    hpa = find(objects, "HorizontalPodAutoscaler", "rag-lodestar-embed")
    assert hpa["spec"]["maxReplicas"] == 6 and hpa["spec"]["scaleTargetRef"]["name"] == "rag-lodestar-embed"
    assert "replicas" not in find(objects, "Deployment", "rag-lodestar-embed")["spec"]
    assert "replicas" not in find(objects, "Deployment", "rag-lodestar-worker")["spec"]
    scaled = find(objects, "ScaledObject", "rag-lodestar-worker")
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis" and trigger["metadata"]["listName"] == "celery"
    assert trigger["metadata"]["address"] == "rag-lodestar-redis:6379" and trigger["metadata"]["listLength"] == "8"
    auth = find(objects, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert auth["spec"]["secretTargetRef"][0]["name"] == "rag-lodestar-redis"
    budgets = {o["metadata"]["name"] for o in objects if o["kind"] == "PodDisruptionBudget"}
    assert budgets == {"rag-lodestar-embed", "rag-lodestar-worker"}


def test_network_policies_and_service_monitor(chart: Any) -> None:
    objects = render(chart, SCENARIOS["network-monitoring"])
    monitor = find(objects, "ServiceMonitor", "rag-lodestar")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    with_metrics = {
        o["metadata"]["name"]
        for o in objects
        if o["kind"] == "Service"
        for p in o["spec"]["ports"]
        if p["name"] == "metrics"
    }
    assert with_metrics == {"rag-lodestar", "rag-lodestar-embed", "rag-lodestar-worker-metrics"}
    policies = {o["metadata"]["name"]: o["spec"] for o in objects if o["kind"] == "NetworkPolicy"}
    server = policies["rag-lodestar-server-np"]["ingress"]
    peers = server[0]["from"]
    assert peers[0] == {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "rag"}}}
    assert peers[1]["namespaceSelector"]["matchExpressions"][0]["values"] == ["rag-app"]
    assert server[1]["ports"] == [{"port": 9464, "protocol": "TCP"}]
    redis_from = policies["rag-lodestar-redis-np"]["ingress"][0]["from"]
    assert [p["podSelector"]["matchLabels"]["app.kubernetes.io/component"] for p in redis_from] == ["server", "worker"]


def test_names_stay_within_63_characters(chart: Any) -> None:
    release = "a-very-long-release-name-for-a-retrieval-stack-x1234"  # 52 characters
    for values in ({}, {"nameOverride": "n" * 63}, {"fullnameOverride": "f" * 63}):
        objects = render(chart, {**values, "embed": {"enabled": True}}, release=release)
        names = [o["metadata"]["name"] for o in objects]
        assert all(len(n) <= 63 and not n.endswith("-") for n in names), names
        sts = next(o for o in objects if o["kind"] == "StatefulSet")["metadata"]["name"]
        assert len(sts) <= 52  # its pods' controller-revision-hash label adds 11 characters
        kinds_names = [(o["kind"], o["metadata"]["name"]) for o in objects]
        assert len(set(kinds_names)) == len(kinds_names), kinds_names  # cutting made no two alike


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"server": {"replicas": "2"}}, "/server/replicas"),
        ({"image": {"pullPolicy": "Sometimes"}}, "value must be one of"),
        ({"server": {"env": {"MODEL": "bundled"}}}, "does not match pattern"),
        ({"worker": {"gpu": -1}}, "/worker/gpu"),
        ({"server": {"services": "embed,search"}}, "/server/services"),
        ({"embed": {"autoscaling": {"targetCPUUtilizationPercentage": 150}}}, "maximum"),
        ({"redis": {"auth": {"password": "p@ss/word"}}}, "/redis/auth/password"),
        ({"server": {"resources": {"limits": {"cpu": "two"}}}}, "/server/resources/limits/cpu"),
        ({"tls": {"certManager": {"issuerRef": {"kind": "Vault"}}}}, "/tls/certManager/issuerRef/kind"),
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
    ],
)
def test_bad_values_fail_the_schema(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(message)):
        chart.validate_schema(chart.merge_values(values))
    with pytest.raises(helm.HelmError):
        render(chart, values)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"tls": {"enabled": True}}, "tls.enabled needs a certificate"),
        ({"tls": {"enabled": True, "certManager": {"enabled": True}}}, "issuerRef.name"),
        ({"auth": {"enabled": True}}, "auth.enabled needs auth.existingSecret"),
        ({"redis": {"enabled": False}}, "workers need a broker"),
    ],
)
def test_incomplete_values_are_refused_with_what_to_set(chart: Any, values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(chart, values)


def test_values_table_in_the_chart_readme_is_in_sync() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "charts" / "values_table.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    schema = json.loads((CHART / "values.schema.json").read_text())
    readme = (CHART / "README.md").read_text()
    for key in schema["properties"]:
        if key != "global":
            assert f"`{key}" in readme, f"{key} is missing from the values table"


def test_every_default_value_is_in_the_schema(chart: Any) -> None:
    """additionalProperties false all the way down: a value the schema lacks fails at install; the
    defaults themselves must pass."""
    chart.validate_schema(yaml.safe_load((CHART / "values.yaml").read_text()))
