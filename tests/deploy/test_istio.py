"""deploy/istio: every document parses and has what its kind requires; core
kinds pass the Kubernetes JSON schemas (kubernetes-validate, offline, strict);
the WasmPlugin's pluginConfig matches envoy/envoy.yaml's; the providers of the
store's catalog all have a ServiceEntry; the store is a fleet on PostgreSQL
(replicas, no volume claim, secrets by secretKeyRef, /healthz probes, PDB,
anti-affinity) whose DestinationRule carries envoy/envoy.yaml's outlier
detection; the example PostgreSQL and the SQLite copy Job (subdirectories, not
applied with the rest) pass the schemas too; and the gateway configuration
scripts/istio_gateway.py generates from these manifests the way Istio would
(the WasmPlugin over ECDS, the EnvoyFilter's patches applied) passes `envoy
--mode validate`. Nothing here runs Istio itself."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml

from deploytools import ROOT, TEMPLATE, envoy_validate, local_ca_bundle, require_wasm

ISTIO = ROOT / "deploy" / "istio"
_spec = importlib.util.spec_from_file_location("istio_gateway", ROOT / "scripts" / "istio_gateway.py")
istio_gateway = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(istio_gateway)
STORE_CLUSTER = "outbound|8082||keygate-store.keygate-system.svc.cluster.local"


def manifest_files():
    return sorted(p for p in ISTIO.glob("*.yaml"))


# Not applied with the manifests: an example PostgreSQL for test clusters,
# and the one-off copy of an SQLite deployment into PostgreSQL.
EXTRA_FILES = [ISTIO / "example-postgres" / "postgres.yaml", ISTIO / "sqlite-to-postgres" / "copy-job.yaml"]


def documents(files=None):
    docs = []
    for path in files or manifest_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                docs.append((path, doc))
    return docs


def by_kind(kind):
    return [doc for _, doc in documents() if doc["kind"] == kind]


def test_there_are_manifests():
    kinds = {doc["kind"] for _, doc in documents()}
    assert {"Namespace", "Secret", "Deployment", "PodDisruptionBudget", "Service", "DestinationRule", "WasmPlugin",
            "EnvoyFilter", "ServiceEntry", "Gateway", "VirtualService"} <= kinds, kinds
    # The store keeps nothing on disk: its data is in PostgreSQL (not provided here).
    assert not kinds & {"PersistentVolumeClaim", "StatefulSet"}, kinds


@pytest.mark.parametrize("path,doc", documents(), ids=lambda x: x.name if isinstance(x, Path) else x.get("kind", "?") + "/" + x.get("metadata", {}).get("name", "?"))
def test_common_fields(path, doc):
    assert isinstance(doc.get("apiVersion"), str) and doc["apiVersion"]
    assert isinstance(doc.get("kind"), str) and doc["kind"]
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", doc["metadata"]["name"])
    if doc["kind"] != "Namespace":
        assert doc["metadata"].get("namespace"), f"{doc['kind']}/{doc['metadata']['name']} has no namespace"


CORE = {"v1", "apps/v1", "policy/v1", "batch/v1"}


def test_extra_files_are_not_manifests():
    """The example PostgreSQL and the copy Job live in subdirectories, so
    `kubectl apply -f deploy/istio/` (not recursive) never applies them."""
    for path in EXTRA_FILES:
        assert path.exists(), path
        assert path.parent != ISTIO and path not in manifest_files()


@pytest.mark.parametrize("doc", [d for _, d in documents() + documents(EXTRA_FILES) if d["apiVersion"] in CORE],
                         ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_core_kinds_match_the_kubernetes_schema(doc):
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: pip install -r tests/deploy/requirements.txt")
    version = kubernetes_validate.utils.latest_version()
    kubernetes_validate.validate(doc, version, strict=True)


def store_objects():
    dep = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "keygate-store")
    secret = next(d for d in by_kind("Secret") if d["metadata"]["name"] == "keygate-store")
    svc = next(d for d in by_kind("Service") if d["metadata"]["name"] == "keygate-store")
    (c,) = dep["spec"]["template"]["spec"]["containers"]
    return dep, secret, svc, c


def test_store_deployment_and_service():
    dep, secret, svc, c = store_objects()
    spec = dep["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= labels.items(), "selector must match the pod template labels"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["path"] == "/healthz", probe
    env = {e["name"]: e for e in c["env"]}
    assert env["KEYGATE_BIND"]["value"] == "0.0.0.0"
    keys = {e["valueFrom"]["secretKeyRef"]["key"] for e in c["env"] if "valueFrom" in e}
    assert keys <= set(secret["stringData"]), "every secret key the store reads is in the Secret template"
    assert secret["stringData"]["database-url"].startswith("postgres://")
    assert svc["spec"]["selector"].items() <= labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    ports = {p["port"]: p for p in svc["spec"]["ports"]}
    assert set(ports) == {8081, 8082}
    for p in ports.values():
        assert p["targetPort"] in container_ports
        assert p["name"].startswith("http-"), "Istio protocol selection by port name"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert c[probe]["httpGet"]["port"] in container_ports, probe
    # A ClusterIP Service (Istio's EDS cluster lists every ready replica), not headless.
    assert svc["spec"].get("clusterIP") != "None" and svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    # storeCluster names this Service's lookup port, the way Istio names its clusters.
    host = f"{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local"
    assert STORE_CLUSTER == f"outbound|8082||{host}"


def test_store_is_a_fleet_on_postgresql():
    """Several stateless replicas of one PostgreSQL: no volume claim, the
    database URL and every secret from the Secret, spread over nodes, at
    least one kept through voluntary disruptions."""
    dep, secret, _, c = store_objects()
    spec = dep["spec"]
    assert spec["replicas"] >= 2
    assert spec.get("strategy", {}).get("type", "RollingUpdate") == "RollingUpdate"
    pod = spec["template"]["spec"]
    assert not any("persistentVolumeClaim" in v for v in pod.get("volumes", []))
    assert "volumeClaimTemplates" not in spec
    env = {e["name"]: e for e in c["env"]}
    for name, key in (("KEYGATE_DATABASE_URL", "database-url"), ("KEYGATE_MASTER_KEY", "master-key"),
                      ("KEYGATE_ADMIN_TOKEN", "admin-token"), ("KEYGATE_GATEWAY_TOKEN", "gateway-token")):
        assert "value" not in env[name], name
        assert env[name]["valueFrom"]["secretKeyRef"] == {"name": secret["metadata"]["name"], "key": key}, name
        assert not env[name]["valueFrom"]["secretKeyRef"].get("optional"), name
    # Preferred anti-affinity on the node: replicas spread where the cluster allows.
    (term,) = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= \
           spec["template"]["metadata"]["labels"].items()
    (pdb,) = [d for d in by_kind("PodDisruptionBudget") if d["metadata"]["name"] == "keygate-store"]
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]
    assert pdb["metadata"]["namespace"] == dep["metadata"]["namespace"]
    assert pdb["spec"]["minAvailable"] < spec["replicas"], "a PDB as large as the Deployment blocks node drains"


def template_store_cluster():
    _, _, template = template_plugin_json()
    return next(c for c in template["static_resources"]["clusters"] if c["name"] == "keygate_store")


def store_destination_rule():
    (dr,) = [d for d in by_kind("DestinationRule") if d["spec"]["host"] == STORE_CLUSTER.split("||")[1]]
    return dr


def duration_s(text):
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", str(text))
    assert m, text
    return float(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]


def test_store_destinationrule_matches_the_template():
    """Istio's cluster of the store gets envoy/envoy.yaml's outlier detection
    through a DestinationRule (Istio has no active HTTP health checks: the
    readiness probe on /healthz takes their place)."""
    dr = store_destination_rule()
    assert dr["apiVersion"].startswith("networking.istio.io/")
    assert dr["metadata"]["namespace"] == "keygate-system"
    assert set(dr["spec"]) <= {"host", "trafficPolicy", "subsets", "exportTo", "workloadSelector"}
    od = dr["spec"]["trafficPolicy"]["outlierDetection"]
    assert set(od) <= {"consecutive5xxErrors", "consecutiveGatewayErrors", "interval", "baseEjectionTime",
                       "maxEjectionPercent", "minHealthPercent", "splitExternalLocalOriginErrors",
                       "consecutiveLocalOriginFailures"}
    want = template_store_cluster()["outlier_detection"]
    assert od["consecutive5xxErrors"] == want["consecutive_5xx"]
    assert od["consecutiveGatewayErrors"] == want["consecutive_gateway_failure"]
    assert od["maxEjectionPercent"] == want["max_ejection_percent"]
    assert duration_s(od["interval"]) == duration_s(want["interval"])
    assert duration_s(od["baseEjectionTime"]) == duration_s(want["base_ejection_time"])
    # What the replicas' readiness gives instead of the health checks: out within seconds.
    _, _, _, c = store_objects()
    r = c["readinessProbe"]
    assert r["periodSeconds"] * r["failureThreshold"] <= 5


def test_example_postgres_is_labelled_and_separate():
    text = EXTRA_FILES[0].read_text()
    assert text.startswith("# EXAMPLE ONLY"), "the example PostgreSQL must say so on its first line"
    docs = [d for _, d in documents([EXTRA_FILES[0]])]
    (sts,) = [d for d in docs if d["kind"] == "StatefulSet"]
    (c,) = sts["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"postgres:16\.\d+(-[a-z]+)?", c["image"]), c["image"]
    env = {e["name"]: e for e in c["env"]}
    assert "value" not in env["POSTGRES_PASSWORD"]
    for d in docs:
        assert d["metadata"]["namespace"] == "keygate-system"
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "keygate-example"


def test_copy_job_moves_the_sqlite_volume():
    (job,) = [d for _, d in documents([EXTRA_FILES[1]])]
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    _, secret, _, store = store_objects()
    assert c["image"] == store["image"]
    assert c["args"][:1] == ["copy"] and c["args"][c["args"].index("--from") + 1] == "/var/lib/keygate"
    env = {e["name"]: e for e in c["env"]}
    assert env["KEYGATE_DATABASE_URL"]["valueFrom"]["secretKeyRef"] == {"name": "keygate-store", "key": "database-url"}
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == "/var/lib/keygate"
    claim = next(v for v in pod["volumes"] if v["name"] == mount["name"])["persistentVolumeClaim"]["claimName"]
    assert claim == "keygate-data", "the claim of the former single-replica store"
    assert job["metadata"]["namespace"] == secret["metadata"]["namespace"]


def template_plugin_json():
    """The downstream filter's JSON in envoy/envoy.yaml, rendered with its defaults."""
    text = TEMPLATE.read_text()
    text = re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text)
    doc = yaml.safe_load(text)
    hcm = doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = next(f for f in hcm["http_filters"]
                if f["name"] == "envoy.filters.http.wasm" and f["typed_config"]["config"]["root_id"] == "keygate")
    return json.loads(wasm["typed_config"]["config"]["configuration"]["value"]), wasm, doc


def test_wasmplugin():
    (wp,) = by_kind("WasmPlugin")
    assert wp["apiVersion"] == "extensions.istio.io/v1alpha1"
    spec = wp["spec"]
    assert spec["url"].startswith(("oci://", "file://", "http://", "https://"))
    assert spec["selector"]["matchLabels"]
    assert spec["phase"] == "AUTHN" and spec["failStrategy"] == "FAIL_CLOSE" and spec["type"] == "HTTP"
    assert set(spec) <= {"selector", "targetRef", "targetRefs", "url", "sha256", "imagePullPolicy", "imagePullSecret",
                         "pluginConfig", "pluginName", "phase", "priority", "failStrategy", "vmConfig", "match", "type"}
    assert spec["vmConfig"]["env"] == [{"name": "KEYGATE_GATEWAY_TOKEN", "valueFrom": "HOST"}]
    template, wasm, _ = template_plugin_json()
    assert spec["pluginName"] == wasm["typed_config"]["config"]["root_id"]
    cfg = spec["pluginConfig"]
    assert cfg["storeCluster"] == STORE_CLUSTER
    assert cfg["storeAuthority"] == "keygate-store.keygate-system.svc.cluster.local"
    # The hop (an internal listener, for fallbacks at other addresses) is not
    # in the Istio manifests: without a gate there, `models` is blanked unread.
    assert "hopCluster" not in cfg
    assert {k: v for k, v in cfg.items() if not k.startswith("store")} == \
           {k: v for k, v in template.items() if not k.startswith("store") and k != "hopCluster"}


def test_service_entries_cover_the_built_in_providers():
    catalog = (ROOT / "store" / "src" / "catalog.rs").read_text()
    hosts = set(re.findall(r'"https://([^/"]+)', catalog))
    assert hosts, "no provider URL found in store/src/catalog.rs"
    covered = set()
    for se in by_kind("ServiceEntry"):
        spec = se["spec"]
        assert spec["hosts"] and spec["resolution"] in {"DNS", "DNS_ROUND_ROBIN", "STATIC", "NONE"}
        assert spec["location"] == "MESH_EXTERNAL"
        assert [(p["number"], p["protocol"]) for p in spec["ports"]] == [(443, "TLS")]
        covered.update(spec["hosts"])
    assert hosts <= covered, f"providers without a ServiceEntry: {sorted(hosts - covered)}"


def test_gateway_and_virtualservice():
    (vs,) = by_kind("VirtualService")
    (gw,) = by_kind("Gateway")
    assert gw["metadata"]["name"] in vs["spec"]["gateways"]
    (route,) = vs["spec"]["http"]
    assert route["name"] == "keygate"  # the EnvoyFilter's HTTP_ROUTE patch matches this name
    assert "retriable-status-codes" in route["retries"]["retryOn"]
    for code in ("401", "403", "429"):
        assert code in route["retries"]["retryOn"].split(",")


def patches(kind=None):
    (ef,) = by_kind("EnvoyFilter")
    out = ef["spec"]["configPatches"]
    return [p for p in out if kind is None or p["applyTo"] == kind]


def test_envoyfilter_structure():
    (ef,) = by_kind("EnvoyFilter")
    (wp,) = by_kind("WasmPlugin")
    assert ef["spec"]["workloadSelector"]["labels"] == wp["spec"]["selector"]["matchLabels"]
    for p in patches():
        assert p["applyTo"] in {"LISTENER", "FILTER_CHAIN", "NETWORK_FILTER", "HTTP_FILTER", "ROUTE_CONFIGURATION",
                                "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER", "EXTENSION_CONFIG", "BOOTSTRAP"}
        assert p["patch"]["operation"] in {"MERGE", "ADD", "REMOVE", "INSERT_BEFORE", "INSERT_AFTER", "INSERT_FIRST",
                                           "REPLACE"}
        assert p["match"]["context"] in {"ANY", "SIDECAR_INBOUND", "SIDECAR_OUTBOUND", "GATEWAY"}
        assert "value" in p["patch"]
    first = [p for p in patches("HTTP_FILTER") if p["patch"]["operation"] == "INSERT_FIRST"]
    assert [p["patch"]["value"]["name"] for p in first] == ["envoy.filters.http.json_to_metadata"]
    clusters = {p["patch"]["value"]["name"] for p in patches("CLUSTER")}
    _, _, template = template_plugin_json()
    # Every provider cluster of envoy.yaml but the hop's (not in Istio: see test_wasmplugin).
    assert clusters == {c["name"] for c in template["static_resources"]["clusters"]} - {"keygate_store", "keygate_hop"}


def test_envoyfilter_fragments_validate_in_envoy(tmp_path):
    """The ingress gateway's Envoy configuration as scripts/istio_gateway.py
    generates it from these manifests (the WasmPlugin's filter over ECDS, the
    EnvoyFilter's patches applied) passes `envoy --mode validate`; so does
    the same with the ECDS filter inlined, which loads the downstream half
    with the WasmPlugin's pluginConfig (validation subscribes to no ECDS)."""
    wasm = require_wasm()
    config, ecds = istio_gateway.generate(tmp_path / "gateway", 10000, 9901, "127.0.0.1:8082", wasm, wasm,
                                          local_ca_bundle(), "1")
    ok, output = envoy_validate(config)
    assert ok, f"the generated Istio gateway config is not a valid Envoy config:\n{output[-4000:]}"

    (resource,) = yaml.safe_load(ecds.read_text())["resources"]
    bootstrap = yaml.safe_load(config.read_text())
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    (filt,) = [f for f in hcm["http_filters"] if f["name"] == resource["name"]]
    del filt["config_discovery"]
    filt["typed_config"] = resource["typed_config"]
    inlined = tmp_path / "inlined.yaml"
    inlined.write_text(json.dumps(bootstrap, indent=1))  # JSON: Envoy reads a bare `n` in YAML as false
    ok, output = envoy_validate(inlined)
    assert ok, f"the WasmPlugin's filter does not load:\n{output[-4000:]}"


def test_ingressgateway_patch():
    doc = yaml.safe_load((ISTIO / "patches" / "ingressgateway.yaml").read_text())
    (c,) = doc["spec"]["template"]["spec"]["containers"]
    assert c["name"] == "istio-proxy"
    assert {e["name"] for e in c["env"]} == {"KEYGATE_GATEWAY_TOKEN"}
    mount = c["volumeMounts"][0]["mountPath"]
    for p in upstream_filter_clusters():
        text = json.dumps(p["patch"]["value"])
        assert f"{mount}/keygate_filter.wasm" in text


def upstream_filter_clusters():
    """The cluster patches that carry the upstream half of the filter (the
    `keygate_direct_*` clusters, for single-candidate requests, carry none)."""
    found = [p for p in patches("CLUSTER") if p["patch"]["value"]["name"].startswith("keygate_upstream_")]
    assert len(found) == 2
    return found


def test_direct_clusters_have_no_upstream_filter():
    direct = [p for p in patches("CLUSTER") if p["patch"]["value"]["name"].startswith("keygate_direct_")]
    assert {p["patch"]["value"]["name"] for p in direct} == {"keygate_direct_http", "keygate_direct_https"}
    for p in direct:
        assert "http_filters" not in json.dumps(p["patch"]["value"])


def test_envoyfilter_upstream_config_matches_the_template():
    """The upstream half carries no settings of its own, and runs in a VM of
    its own: a vm_id no WasmPlugin's VM has (Istio sets none)."""
    _, _, template = template_plugin_json()
    https = next(c for c in template["static_resources"]["clusters"] if c["name"] == "keygate_upstream_https")
    opts = https["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
    want = json.loads(opts["http_filters"][0]["typed_config"]["config"]["configuration"]["value"])
    assert want == {"role": "upstream"}
    (wp,) = by_kind("WasmPlugin")
    plugin_vm = istio_gateway.istiod_wasm_config(wp, "1")["config"]["vm_config"]
    for p in upstream_filter_clusters():
        opts = p["patch"]["value"]["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"]
        cfg = opts["http_filters"][0]["typed_config"]["config"]
        assert json.loads(cfg["configuration"]["value"]) == want, p["patch"]["value"]["name"]
        assert cfg["vm_config"].get("vm_id"), "the upstream half names its own VM"
        assert cfg["vm_config"]["vm_id"] != plugin_vm.get("vm_id", ""), "the halves run in different VMs"
