"""The Helm chart, linted and rendered offline, every manifest checked against Kubernetes' schemas.

helm-python-sdk carries Helm's Go library (no helm binary, no cluster); kubernetes-validate ships
the Kubernetes JSON schemas. The value sets are the chart's own ci/ and examples/ files.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python
import kubernetes_validate
import pytest
import yaml

from asyncgate import config as asyncgate_config
from tests.support.sealing import ENCRYPTION_KEY

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "asyncgate"
RELEASE = "asyncgate"
NAMESPACE = "ml"
UPSTREAM = {"upstream": {"url": "http://model-server.ml.svc:8000"}}

# The chart's kubeVersion floor, and the newest schemas kubernetes-validate ships.
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

VALUE_FILES = {
    "standalone": CHART / "ci" / "standalone-values.yaml",
    "bundled-redis": CHART / "ci" / "bundled-redis-values.yaml",
    "ha": CHART / "ci" / "ha-values.yaml",
    "sidecar": CHART / "examples" / "values-sidecar.yaml",
    "sidecar-external": CHART / "examples" / "values-sidecar-external.yaml",
}

Manifest = dict[str, Any]


def load_values(name: str) -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load(VALUE_FILES[name].read_text())
    return values


@pytest.fixture(scope="module")
def chart() -> Iterator[helm_python.Chart]:
    with helm_python.Chart.load(CHART) as loaded:
        yield loaded


def render(chart: helm_python.Chart, values: dict[str, Any]) -> list[Manifest]:
    """Every object the chart renders for ``values``, in template order."""
    rendered = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    return [
        doc
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def only(manifests: list[Manifest], kind: str, name: str | None = None) -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and (name is None or m["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {[m['metadata']['name'] for m in found]}"
    return found[0]


def kinds(manifests: list[Manifest]) -> list[str]:
    return sorted(m["kind"] for m in manifests)


def container(pod_spec: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def env_of(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in c.get("env", [])}


def config_file(manifests: list[Manifest]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(only(manifests, "ConfigMap")["data"]["config.yaml"])
    return loaded


def target_container_port(service: Manifest, pod_spec: dict[str, Any]) -> tuple[str, int]:
    """The (container, port) a Service's first port reaches in ``pod_spec``, by name or number."""
    target = service["spec"]["ports"][0]["targetPort"]
    for c in pod_spec["containers"]:
        for port in c.get("ports", []):
            if target in (port.get("name"), port["containerPort"]):
                return c["name"], port["containerPort"]
    raise AssertionError(f"targetPort {target!r} matches no container port")


def render_error(chart: helm_python.Chart, values: dict[str, Any]) -> str:
    with pytest.raises(helm_python.HelmError) as caught:
        chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    return str(caught.value)


# --- lint and schemas -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, *VALUE_FILES])
def test_chart_lints_without_warnings(name: str | None) -> None:
    values = load_values(name) if name else None
    report = helm_python.lint(CHART, values, strict=True, kube_version="v1.30.0")
    # Severity 1 is informational ("icon is recommended"); 2 is a warning, 3 an error.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []
    assert report["errors"] == []


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_FILES)
def test_every_manifest_is_valid_kubernetes(chart: helm_python.Chart, name: str, version: str) -> None:
    manifests = render(chart, load_values(name))
    for manifest in manifests:
        if manifest["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a CRD: test_ha_values_add_hpa_pdb_and_servicemonitor checks its structure
        kubernetes_validate.validate(manifest, version, strict=True)


def test_kubernetes_validation_rejects_an_unknown_field(chart: helm_python.Chart) -> None:
    # Guards the test above against a validator that accepts anything.
    deployment = only(render(chart, UPSTREAM), "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSIONS[0], strict=True)


def test_sidecar_pod_example_is_valid_kubernetes() -> None:
    for doc in yaml.safe_load_all((CHART / "examples" / "sidecar-pod.yaml").read_text()):
        for version in KUBE_VERSIONS:
            kubernetes_validate.validate(doc, version, strict=True)


def test_default_values_pass_the_schema(chart: helm_python.Chart) -> None:
    chart.validate_schema(chart.values)
    chart.validate_schema(UPSTREAM)


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"replicas": 3}, "additional properties 'replicas' not allowed"),
        ({"config": {"upstream": "http://x"}}, "/config"),
        ({"config": {"shutdown": {"drain_timeout": 5}}}, "/config"),
        ({"config": {"server": {"port": 9000}}}, "/config/server"),
        ({"config": {"runs": {"timeout": "5 minutes"}}}, "/config/runs/timeout"),
        ({"mode": "daemonset"}, "/mode"),
        ({"redis": {"bundled": {"appendfsync": "sometimes"}}}, "/redis/bundled/appendfsync"),
        ({"upstream": {"url": "model-server:8000"}}, "/upstream/url"),
    ],
)
def test_schema_rejects_unknown_or_malformed_values(
    chart: helm_python.Chart, values: dict[str, Any], where: str
) -> None:
    with pytest.raises(helm_python.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert where in str(caught.value)


def test_schema_config_keys_are_asyncgates_own_keys() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    sections = schema["properties"]["config"]["properties"]
    # The keys the chart sets itself are deliberately absent from `config`.
    # shutdown.pre_stop_delay is the kubelet's preStop sleep there (shutdown.preStopSleepSeconds).
    chart_owned = {
        "server": {"host", "port", "workers"},
        "store": {"redis_url", "data_dir"},
        "shutdown": {"drain_timeout", "pre_stop_delay"},
    }
    expected = {
        field.name: {f.name for f in dataclasses.fields(getattr(asyncgate_config.Config(), field.name))}
        - chart_owned.get(field.name, set())
        for field in dataclasses.fields(asyncgate_config.Config)
        if field.name not in ("upstream", "deployment", "routes")
    }
    expected = {section: keys for section, keys in expected.items() if keys}
    # routes is a list of route policies, not a section of keys.
    route_keys = set(sections.pop("routes")["items"]["properties"])
    assert route_keys == set(asyncgate_config.ROUTE_KEYS)
    assert {section: set(body["properties"]) for section, body in sections.items()} == expected


# --- what each value set renders ------------------------------------------------------------------


@pytest.mark.parametrize("name", VALUE_FILES)
def test_every_resource_carries_the_standard_labels(chart: helm_python.Chart, name: str) -> None:
    for manifest in render(chart, load_values(name)):
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "asyncgate"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["helm.sh/chart"] == "asyncgate-0.1.0"
        assert manifest["metadata"]["namespace"] == NAMESPACE


@pytest.mark.parametrize("name", VALUE_FILES)
def test_rendered_config_is_accepted_by_asyncgate(chart: helm_python.Chart, name: str, tmp_path: Path) -> None:
    values = load_values(name)
    manifests = render(chart, values)
    path = tmp_path / "config.yaml"
    path.write_text(only(manifests, "ConfigMap")["data"]["config.yaml"])
    environ = {}
    if "Deployment" in kinds(manifests):
        gateway = container(only(manifests, "Deployment")["spec"]["template"]["spec"], "asyncgate")
        # Literal values as Kubernetes passes them ($(VAR) expanded); Secret references stand for a URL.
        secrets = {"REDIS_PASSWORD": "s3cret"}
        for var in gateway.get("env", []):
            if "value" in var:
                value = var["value"]
                for secret, text in secrets.items():
                    value = value.replace(f"$({secret})", text)
                environ[var["name"]] = value
            elif var["name"] == "ASYNCGATE_STORE_ENCRYPTION_KEY":
                environ[var["name"]] = ENCRYPTION_KEY
            elif var["name"].startswith("ASYNCGATE_"):
                environ[var["name"]] = "redis://redis.test:6379/0"
    loaded = asyncgate_config.load(path, environ=environ)
    assert loaded.server.host == "0.0.0.0"
    assert loaded.server.port == 8080
    assert loaded.store.data_dir == "/var/lib/asyncgate"
    assert loaded.shutdown.drain_timeout == values.get("shutdown", {}).get("drainTimeoutSeconds", 30)
    if "Deployment" in kinds(manifests):
        uses_redis = bool(values.get("redis"))
        assert (loaded.store.redis_url is not None) == uses_redis


def notes(chart: helm_python.Chart, values: dict[str, Any]) -> str:
    rendered = chart.render(values=values, name=RELEASE, namespace=NAMESPACE)
    return next(text for path, text in rendered.items() if path.endswith("NOTES.txt"))


@pytest.mark.parametrize(
    ("config", "credential"),
    [
        ({}, "-H 'Authorization: Bearer <your token>'"),
        ({"access": {"header": "X-Api-Key"}}, "-H 'X-Api-Key: <your credential>'"),
        ({"access": {"mode": "open"}}, None),
    ],
)
def test_the_notes_examples_carry_the_credentials_they_need(
    chart: helm_python.Chart, config: dict[str, Any], credential: str | None
) -> None:
    text = notes(chart, {"upstream": {"url": "http://model:8000"}, "config": config})
    asynchronous = [line for line in text.splitlines() if "async=true" in line or "/runs/<run id>" in line]
    assert len(asynchronous) == 2
    for line in asynchronous:
        assert (credential in line) if credential else ("-H '" not in line), line


def test_standalone_renders_one_hardened_gateway_in_front_of_the_upstream(chart: helm_python.Chart) -> None:
    manifests = render(chart, load_values("standalone"))
    assert kinds(manifests) == ["ConfigMap", "Deployment", "Service", "ServiceAccount"]

    deployment = only(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["asyncgate"]
    gateway = container(pod, "asyncgate")
    assert gateway["args"] == ["serve", "--config", "/etc/asyncgate/config.yaml"]
    assert gateway["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert gateway["livenessProbe"]["httpGet"] == {"path": "/_asyncgate/healthz", "port": "http"}
    assert gateway["readinessProbe"]["httpGet"] == {"path": "/_asyncgate/readyz", "port": "http"}
    assert gateway["startupProbe"]["httpGet"] == {"path": "/_asyncgate/healthz", "port": "http"}
    assert "env" not in gateway  # the embedded store: no Redis URL

    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "asyncgate"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = gateway["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}

    # preStop sleep 5 s + drain 30 s, and 15 s to spare.
    assert gateway["lifecycle"]["preStop"] == {"sleep": {"seconds": 5}}
    assert pod["terminationGracePeriodSeconds"] == 50
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "asyncgate"
    assert volumes["data"] == {"name": "data", "emptyDir": {}}
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    assert mounts == {"config": "/etc/asyncgate", "data": "/var/lib/asyncgate", "tmp": "/tmp"}

    service = only(manifests, "Service")
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["port"] == 8080
    assert target_container_port(service, pod) == ("asyncgate", 8080)
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()

    assert config_file(manifests)["upstream"] == "http://model-server.ml.svc.cluster.local:8000"


def test_config_change_rolls_the_pods(chart: helm_python.Chart) -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = only(render(chart, values), "Deployment")
        annotation: str = deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
        return annotation

    changed = {**UPSTREAM, "config": {"limits": {"max_inflight": 7}}}
    assert checksum(UPSTREAM) == checksum(UPSTREAM)
    assert checksum(UPSTREAM) != checksum(changed)


def test_embedded_store_on_a_claim_rolls_out_with_recreate(chart: helm_python.Chart) -> None:
    manifests = render(chart, {**UPSTREAM, "persistence": {"enabled": True, "size": "2Gi"}})
    claim = only(manifests, "PersistentVolumeClaim")
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    deployment = only(manifests, "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": claim["metadata"]["name"]}


def test_bundled_redis_is_a_durable_single_instance_behind_a_password(chart: helm_python.Chart) -> None:
    manifests = render(chart, load_values("bundled-redis"))
    assert kinds(manifests) == [
        "ConfigMap",
        "Deployment",
        "Secret",  # the encryption key
        "Secret",
        "Service",
        "Service",
        "Service",
        "ServiceAccount",
        "StatefulSet",
    ]
    redis = only(manifests, "StatefulSet")
    assert redis["metadata"]["name"] == "asyncgate-redis"
    assert redis["spec"]["replicas"] == 1
    assert redis["spec"]["serviceName"] == "asyncgate-redis-headless"
    pod = redis["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False
    server = container(pod, "redis")
    args = server["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"
    assert server["securityContext"]["runAsNonRoot"] is True
    claim = redis["spec"]["volumeClaimTemplates"][0]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "4Gi"
    assert {"name": "data", "mountPath": "/data"} in server["volumeMounts"]

    secret = only(manifests, "Secret", "asyncgate-redis")
    assert secret["metadata"]["name"] == "asyncgate-redis"
    assert len(secret["data"]["redis-password"]) > 0
    service = only(manifests, "Service", "asyncgate-redis")
    assert service["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()

    deployment = only(manifests, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    env = env_of(container(deployment["spec"]["template"]["spec"], "asyncgate"))
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "asyncgate-redis", "key": "redis-password"}
    assert env["ASYNCGATE_STORE_REDIS_URL"]["value"] == "redis://:$(REDIS_PASSWORD)@asyncgate-redis.ml.svc:6379/0"
    # The gateway's Service does not select the Redis pod, and the other way round.
    gateway_service = only(manifests, "Service", "asyncgate")
    redis_labels = redis["spec"]["template"]["metadata"]["labels"]
    assert not gateway_service["spec"]["selector"].items() <= redis_labels.items()


def test_redis_url_value_is_stored_in_a_secret(chart: helm_python.Chart) -> None:
    manifests = render(chart, {**UPSTREAM, "redis": {"url": "redis://:pw@redis.db:6379/2"}, "replicaCount": 2})
    secret = only(manifests, "Secret", "asyncgate-store")
    assert secret["metadata"]["name"] == "asyncgate-store"
    assert "redis-url" in secret["data"]
    env = env_of(container(only(manifests, "Deployment")["spec"]["template"]["spec"], "asyncgate"))
    assert env["ASYNCGATE_STORE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "asyncgate-store",
        "key": "redis-url",
    }
    assert "redis://" not in json.dumps(only(manifests, "Deployment"))


def test_ha_values_add_hpa_pdb_and_servicemonitor(chart: helm_python.Chart) -> None:
    manifests = render(chart, load_values("ha"))
    # redis.existingSecret: the chart creates no Secret for the URL, only the encryption key's
    assert [m["metadata"]["name"] for m in manifests if m["kind"] == "Secret"] == ["asyncgate-encryption"]
    deployment = only(manifests, "Deployment")
    assert "replicas" not in deployment["spec"]  # the HPA owns the replica count
    pod = deployment["spec"]["template"]["spec"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    env = env_of(container(pod, "asyncgate"))
    assert env["ASYNCGATE_STORE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "asyncgate-redis-url",
        "key": "url",
    }
    assert env["ASYNCGATE_LIMITS_MAX_CONNECTIONS"] == {"name": "ASYNCGATE_LIMITS_MAX_CONNECTIONS", "value": "2048"}
    # drain 60 s + preStop 5 s + 15 s.
    assert pod["terminationGracePeriodSeconds"] == 80
    spread = pod["topologySpreadConstraints"][0]
    assert spread["labelSelector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]

    hpa = only(manifests, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "asyncgate"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    assert hpa["spec"]["metrics"][0]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 75}

    pdb = only(manifests, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    # The ServiceMonitor CRD, checked structurally: it must select the gateway's Service and name a
    # port that Service has, on the metrics path.
    monitor = only(manifests, "ServiceMonitor")
    service = only(manifests, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/_asyncgate/metrics"
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("30s", "10s")

    ingress = only(manifests, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "asyncgate", "port": {"name": "http"}}


def test_custom_prefix_moves_probes_and_metrics(chart: helm_python.Chart) -> None:
    values = {**UPSTREAM, "config": {"server": {"prefix": "/gw"}}, "metrics": {"serviceMonitor": {"enabled": True}}}
    manifests = render(chart, values)
    gateway = container(only(manifests, "Deployment")["spec"]["template"]["spec"], "asyncgate")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/gw/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/gw/healthz"
    assert only(manifests, "ServiceMonitor")["spec"]["endpoints"][0]["path"] == "/gw/metrics"


def test_sidecar_pod_runs_the_model_server_behind_asyncgate(chart: helm_python.Chart) -> None:
    manifests = render(chart, load_values("sidecar"))
    assert config_file(manifests)["upstream"] == "http://127.0.0.1:8000"
    deployment = only(manifests, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["model-server", "asyncgate"]
    model = container(pod, "model-server")
    assert model["image"] == "registry.example.com/ml/model-server:1.4.2"
    assert model["ports"] == [{"name": "model", "containerPort": 8000, "protocol": "TCP"}]
    assert model["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert model["startupProbe"]["httpGet"]["path"] == "/health"

    # The Service reaches asyncgate, never the model server directly.
    service = only(manifests, "Service")
    assert target_container_port(service, pod) == ("asyncgate", 8080)
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]

    # Both containers are told to stop at once: the model server outlives asyncgate's drain, and
    # both fit in the grace period.
    grace = pod["terminationGracePeriodSeconds"]
    gateway_stop = container(pod, "asyncgate")["lifecycle"]["preStop"]["sleep"]["seconds"] + 30
    model_stop = model["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert gateway_stop <= model_stop < grace
    assert only(manifests, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1


def test_sidecar_without_model_server_serves_your_pods(chart: helm_python.Chart) -> None:
    manifests = render(chart, load_values("sidecar-external"))
    assert "Deployment" not in kinds(manifests)
    assert "ServiceAccount" not in kinds(manifests)
    assert config_file(manifests)["upstream"] == "http://127.0.0.1:8000"
    service = only(manifests, "Service", "asyncgate")
    assert service["spec"]["selector"] == {"app.kubernetes.io/name": "model-server"}
    assert service["spec"]["ports"][0]["targetPort"] == 8080

    # examples/sidecar-pod.yaml fits what the chart rendered.
    (example,) = yaml.safe_load_all((CHART / "examples" / "sidecar-pod.yaml").read_text())
    pod = example["spec"]["template"]["spec"]
    assert service["spec"]["selector"].items() <= example["spec"]["template"]["metadata"]["labels"].items()
    assert target_container_port(service, pod) == ("asyncgate", 8080)
    assert pod["enableServiceLinks"] is False
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["asyncgate-config"]["configMap"]["name"] == only(manifests, "ConfigMap")["metadata"]["name"]
    gateway = container(pod, "asyncgate")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/_asyncgate/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/_asyncgate/healthz"
    password = env_of(gateway)["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]
    secret = only(manifests, "Secret", password["name"])
    assert password["key"] in secret["data"]
    redis_service = only(manifests, "Service", "asyncgate-redis")
    assert f"@{redis_service['metadata']['name']}:6379/" in env_of(gateway)["ASYNCGATE_STORE_REDIS_URL"]["value"]
    stop = gateway["lifecycle"]["preStop"]["sleep"]["seconds"] + 30
    assert stop <= container(pod, "model-server")["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] > stop
    config_port = config_file(manifests)["upstream"].rsplit(":", 1)[1]
    assert int(config_port) == container(pod, "model-server")["ports"][0]["containerPort"]


# --- what the chart refuses -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "values",
    [
        {**UPSTREAM, "replicaCount": 3},
        {**UPSTREAM, "autoscaling": {"enabled": True}},
        {**load_values("sidecar"), "redis": {}},
        {**UPSTREAM, "workers": 2},
    ],
    ids=["replicas", "autoscaling", "sidecar-replicas", "workers"],
)
def test_more_than_one_replica_without_redis_fails_the_render(chart: helm_python.Chart, values: dict[str, Any]) -> None:
    message = render_error(chart, values)
    assert "no Redis is configured" in message or "needs Redis" in message
    assert "redis.url, redis.existingSecret or redis.bundled.enabled" in message


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ({**UPSTREAM, "terminationGracePeriodSeconds": 35}, "terminationGracePeriodSeconds (35) must be larger"),
        (
            {
                **UPSTREAM,
                "shutdown": {"drainTimeoutSeconds": 120, "preStopSleepSeconds": 0},
                "terminationGracePeriodSeconds": 60,
            },
            "terminationGracePeriodSeconds (60) must be larger",
        ),
        ({}, "upstream.url is required"),
        ({**UPSTREAM, "redis": {"url": "redis://r:6379", "bundled": {"enabled": True}}}, "set only one of redis.url"),
        ({"mode": "sidecar"}, "sidecar.modelServer.enabled"),
        ({**UPSTREAM, "mode": "sidecar", "sidecar": {"podSelector": {"app": "m"}}}, "upstream.url must be empty"),
        ({"mode": "sidecar", "sidecar": {"modelServer": {"enabled": True}}}, "image.repository is required"),
        ({**UPSTREAM, "sidecar": {"modelServer": {"enabled": True}}}, "needs mode: sidecar"),
        (
            {**UPSTREAM, "redis": {"bundled": {"enabled": True, "auth": {"password": "p@ss/word"}}}},
            "URL-safe characters",
        ),
    ],
    ids=[
        "grace",
        "grace-long-drain",
        "no-upstream",
        "two-redis",
        "sidecar-nothing",
        "sidecar-upstream",
        "no-image",
        "modelserver-standalone",
        "password",
    ],
)
def test_inconsistent_values_fail_with_a_message_naming_the_keys(
    chart: helm_python.Chart, values: dict[str, Any], expected: str
) -> None:
    assert expected in render_error(chart, values)


def test_workers_value_reaches_the_config_file(chart: helm_python.Chart) -> None:
    values = {**UPSTREAM, "workers": 4, "redis": {"url": "redis://r:6379/0"}}
    config_map = only(render(chart, values), "ConfigMap")
    assert yaml.safe_load(config_map["data"]["config.yaml"])["server"]["workers"] == 4


def test_longer_drain_raises_the_default_grace_period(chart: helm_python.Chart) -> None:
    values = {**UPSTREAM, "shutdown": {"drainTimeoutSeconds": 300, "preStopSleepSeconds": 0}}
    pod = only(render(chart, values), "Deployment")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 315
    assert "lifecycle" not in container(pod, "asyncgate")
