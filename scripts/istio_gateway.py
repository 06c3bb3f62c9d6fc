"""An Envoy configuration shaped like the one Istio gives the ingress gateway
for deploy/istio, generated from its manifests: the WasmPlugin's filter
delivered over ECDS (a watched file here, ADS in a cluster), the Gateway /
VirtualService route, and the EnvoyFilter's patches applied with Istio's
semantics. Used by scripts/istio-gateway and the Istio test tier
(tests/e2e/istio_mesh.py, tests/deploy/test_istio.py).

How Istio does it (github.com/istio/istio, read at the versions that have
`FailOpen is deprecated in 1.25` in pilot/pkg/model):
- pilot/pkg/model (WasmPluginWrapper.buildPluginConfig, buildVMConfig):
  PluginConfig name `<ns>.<name>`, root_id = pluginName, configuration =
  StringValue(protomarshal.ToJSON(pluginConfig)) (legacy jsonpb: compact,
  map keys sorted), failStrategy FAIL_CLOSE -> failure_policy FAIL_CLOSED
  (proxies >= 1.25; fail_open before), vm_config without vm_id, runtime
  envoy.wasm.runtime.v8, code = remote (oci URL, 30 s timeout, cluster "_"),
  key_values ISTIO_META_WASM_IMAGE_PULL_POLICY (when set) and
  ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION, vmConfig.env inline -> key_values,
  valueFrom HOST -> host_env_keys. ECDS resource and HTTP filter name:
  `extensions.istio.io/wasmplugin/<ns>.<name>`.
- pkg/wasm/convert.go (rewriteVMConfig): the istio-agent fetches the module,
  rewrites code to a local file of its cache and strips every ISTIO_META_*
  key_value before Envoy sees the config (key_values dropped when empty;
  istio/istio#43947, Istio 1.18). So a change of resource version alone
  reaches Envoy as an identical config, which Envoy's ECDS skips (same hash).
  When the fetch fails, the agent sends an RBAC filter instead (deny-all for
  FAIL_CLOSE): hence RBAC among the filter's type_urls.
- pilot/pkg/networking/core/extension/wasmplugin.go (toEnvoyHTTPFilter): the
  HTTP filter is config_discovery {config_source {ads, initial_fetch_timeout
  0s, V3}, type_urls [Wasm, RBAC]}, no default config.
- pilot/pkg/networking/core/listener_builder.go (buildHTTPConnectionManager):
  a gateway's chain is [mx, ext_authz, AUTHN plugins, authn, AUTHZ plugins,
  rbac, STATS plugins, unspecified plugins, grpc_stats, alpn, fault, cors,
  telemetry, router]; here only the filters upstream Envoy has and Istio
  adds without policies: AUTHN plugin, grpc_stats, fault, cors, router.
- pilot/pkg/networking/core/route/retry/retry.go (ConvertPolicy): retries
  become num_retries = attempts, retry_on without the numeric codes,
  retriable_status_codes = the codes, per_try_timeout, retry_host_predicate
  previous_hosts, host_selection_retry_max_attempts 5; the route timeout is
  also max_grpc_timeout (route.go).
- pilot/pkg/networking/core/envoyfilter/{listener,rc,cluster}_patch.go and
  pkg/proto/merge: MERGE is proto merge (messages recursively, lists
  appended, map entries and durations replaced, a oneof member clears its
  siblings); a filter's typed_config is merged as the message it holds.
"""

import argparse
import copy
import json
import os
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "istio"

WASM_TYPE = "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm"
RBAC_TYPE = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
EXTENSION_CONFIG_TYPE = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig"
HCM = "envoy.filters.network.http_connection_manager"
HCM_TYPE = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
WASMPLUGIN_PREFIX = "extensions.istio.io/wasmplugin/"
# The gateway Service maps port 80 to the pod's 8080: Istio names its
# listener, stats and routes after the pod port.
GATEWAY_POD_PORT = 8080
# Paths of the cluster that the tests' machine has elsewhere.
UPSTREAM_WASM_IN_CLUSTER = "/etc/keygate/keygate_filter.wasm"
CA_BUNDLE_IN_CLUSTER = "/etc/ssl/certs/ca-certificates.crt"


def manifests(directory=MANIFESTS):
    """{kind: [documents]} of every manifest in deploy/istio (not its subdirectories)."""
    out = {}
    for path in sorted(Path(directory).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.setdefault(doc["kind"], []).append(doc)
    return out


def one(docs, kind):
    (doc,) = docs[kind]
    return doc


def duration(text):
    """A Kubernetes duration as Envoy's YAML spells it (seconds)."""
    text = str(text)
    for suffix, scale in (("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)):
        if text.endswith(suffix) and text[: -len(suffix)].replace(".", "", 1).isdigit():
            seconds = float(text[: -len(suffix)]) * scale
            return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"
    raise ValueError(f"not a duration: {text!r}")


# --- the WasmPlugin -> ECDS --------------------------------------------------

def plugin_name(wp):
    return f"{wp['metadata']['namespace']}.{wp['metadata']['name']}"


def ecds_resource_name(wp):
    return WASMPLUGIN_PREFIX + plugin_name(wp)


def plugin_configuration(wp):
    """pluginConfig as istiod encodes it: a google.protobuf.Struct through
    legacy jsonpb (compact, keys sorted; whole numbers without exponent)."""
    return json.dumps(wp["spec"].get("pluginConfig") or {}, sort_keys=True, separators=(",", ":"))


def istiod_wasm_config(wp, resource_version):
    """The Wasm filter istiod sends for the WasmPlugin (remote code)."""
    spec = wp["spec"]
    env = {}
    if spec.get("imagePullPolicy"):
        env["ISTIO_META_WASM_IMAGE_PULL_POLICY"] = spec["imagePullPolicy"]
    env["ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION"] = resource_version
    host_keys = []
    for var in (spec.get("vmConfig") or {}).get("env") or []:
        if var.get("valueFrom") == "HOST":
            host_keys.append(var["name"])
        else:
            env[var["name"]] = var.get("value", "")
    environment = {"key_values": env}
    if host_keys:
        environment["host_env_keys"] = host_keys
    config = {
        "name": plugin_name(wp),
        "root_id": spec["pluginName"],
        "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                          "value": plugin_configuration(wp)},
        "vm_config": {
            "runtime": "envoy.wasm.runtime.v8",
            "code": {"remote": {"http_uri": {"uri": spec["url"], "timeout": "30s", "cluster": "_"},
                                "sha256": spec.get("sha256", "")}},
            "environment_variables": environment,
        },
    }
    policy = {"FAIL_OPEN": "FAIL_OPEN", "FAIL_CLOSE": "FAIL_CLOSED", "FAIL_RELOAD": "FAIL_RELOAD"}
    if spec.get("failStrategy") in policy:
        config["failure_policy"] = policy[spec["failStrategy"]]
    return {"@type": WASM_TYPE, "config": config}


def agent_rewrite(wasm, module_path, strip_meta=True):
    """What istio-agent does to istiod's config before Envoy sees it: the
    module becomes a file of its cache, the ISTIO_META_* variables go (since
    Istio 1.18; `strip_meta=False` is the older agent, which passed them on)."""
    out = copy.deepcopy(wasm)
    vm = out["config"]["vm_config"]
    env = vm.get("environment_variables") or {}
    env["key_values"] = {k: v for k, v in (env.get("key_values") or {}).items()
                         if not (strip_meta and k.startswith("ISTIO_META"))}
    if not env["key_values"]:
        del env["key_values"]
    if env:
        vm["environment_variables"] = env
    else:
        vm.pop("environment_variables", None)
    vm["code"] = {"local": {"filename": str(module_path)}}
    return out


def ecds_response(wp, module_path, resource_version, strip_meta=True):
    """The ECDS DiscoveryResponse the gateway's Envoy receives."""
    return {
        "version_info": resource_version,
        "resources": [{
            "@type": EXTENSION_CONFIG_TYPE,
            "name": ecds_resource_name(wp),
            "typed_config": agent_rewrite(istiod_wasm_config(wp, resource_version), module_path, strip_meta),
        }],
    }


def write_atomically(path, text):
    """A temp file in the same directory, then rename: Envoy's file watch
    sees one move, never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_ecds(path, module_path, resource_version, docs=None, strip_meta=True):
    """(Re)writes the ECDS file: how a WasmPlugin update reaches Envoy."""
    wp = one(docs or manifests(), "WasmPlugin")
    response = ecds_response(wp, module_path, resource_version, strip_meta)
    write_atomically(path, json.dumps(response, indent=1))


def ecds_filter(wp, ecds_path):
    """The HTTP filter that names the ECDS resource (Istio: ADS; here the
    file, which Envoy watches for a rename into place: write_atomically)."""
    return {
        "name": ecds_resource_name(wp),
        "config_discovery": {
            "config_source": {
                "path_config_source": {"path": str(ecds_path)},
                "initial_fetch_timeout": "0s",
                "resource_api_version": "V3",
            },
            "type_urls": [WASM_TYPE, RBAC_TYPE],
        },
    }


# --- the Gateway / VirtualService -> listener and route ------------------------

def retry_policy(retries):
    """Istio's ConvertPolicy: DefaultPolicy overridden by the VirtualService."""
    policy = {
        "num_retries": 2,
        "retry_on": "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
        "retriable_status_codes": [503],
        "retry_host_predicate": [{
            "name": "envoy.retry_host_predicates.previous_hosts",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"},
        }],
        "host_selection_retry_max_attempts": 5,
    }
    if retries is None:
        return policy
    if retries.get("attempts", 0) <= 0:
        return None
    policy["num_retries"] = retries["attempts"]
    if retries.get("retryOn"):
        parts = [p.strip() for p in retries["retryOn"].split(",") if p.strip()]
        # Istio takes any integer with an HTTP status text as a status code.
        codes = [int(p) for p in parts if p.isdigit() and 100 <= int(p) <= 599]
        policy["retry_on"] = ",".join(p for p in parts if not (p.isdigit() and 100 <= int(p) <= 599))
        policy["retriable_status_codes"] = codes
        if codes and "retriable-status-codes" not in policy["retry_on"]:
            policy["retry_on"] += ",retriable-status-codes"
    if retries.get("perTryTimeout"):
        policy["per_try_timeout"] = duration(retries["perTryTimeout"])
    return policy


def destination_cluster(destination):
    port = destination.get("port", {}).get("number", "")
    return f"outbound|{port}|{destination.get('subset', '')}|{destination['host']}"


def http_route(vs, http):
    """One VirtualService http entry as Istio's Envoy route (prefix matches
    and a single destination: what gateway.yaml uses)."""
    (match,) = http.get("match") or [{"uri": {"prefix": "/"}}]
    (dest,) = http["route"]
    action = {"cluster": destination_cluster(dest["destination"])}
    action["timeout"] = duration(http["timeout"]) if http.get("timeout") else "0s"
    action["max_grpc_timeout"] = action["timeout"]
    policy = retry_policy(http.get("retries"))
    if policy:
        action["retry_policy"] = policy
    port = dest["destination"].get("port", {}).get("number")
    meta = vs["metadata"]
    return {
        "name": http["name"],
        "match": {"prefix": match["uri"]["prefix"], "case_sensitive": True},
        "route": action,
        "metadata": {"filter_metadata": {"istio": {
            "config": f"/apis/networking.istio.io/v1/namespaces/{meta['namespace']}/virtual-service/{meta['name']}"}}},
        "decorator": {"operation": f"{dest['destination']['host']}:{port}/*"},
    }


def gateway_listener(docs, wp, ecds_path, port):
    vs = one(docs, "VirtualService")
    server_port = one(docs, "Gateway")["spec"]["servers"][0]["port"]["number"]
    hcm = {
        "@type": HCM_TYPE,
        "stat_prefix": f"outbound_0.0.0.0_{GATEWAY_POD_PORT}",
        "route_config": {
            "name": f"http.{GATEWAY_POD_PORT}",
            "validate_clusters": False,
            "ignore_port_in_host_matching": True,
            "virtual_hosts": [{"name": f"*:{server_port}", "domains": ["*"],
                               "routes": [http_route(vs, h) for h in vs["spec"]["http"]]}],
        },
        "http_filters": [
            ecds_filter(wp, ecds_path),  # phase AUTHN, first without other extensions
            {"name": "envoy.filters.http.grpc_stats", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig",
                "emit_filter_state": True, "stats_for_all_methods": False}},
            {"name": "envoy.filters.http.fault", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"}},
            {"name": "envoy.filters.http.cors", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors"}},
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
        "use_remote_address": True,
        "normalize_path": True,
        "path_with_escaped_slashes_action": "KEEP_UNCHANGED",
        "stream_idle_timeout": "0s",
        "upgrade_configs": [{"upgrade_type": "websocket"}],
        "forward_client_cert_details": "SANITIZE_SET",
        "set_current_client_cert_details": {"subject": True, "dns": True, "uri": True},
        "server_name": "istio-envoy",
        "request_id_extension": {"typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.request_id.uuid.v3.UuidRequestIdConfig",
            "use_request_id_for_trace_sampling": True}},
    }
    return {
        "name": f"0.0.0.0_{GATEWAY_POD_PORT}",
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
        "filter_chains": [{"filters": [{"name": HCM, "typed_config": hcm}]}],
    }


def store_cluster(docs, wp, host, port):
    """Istio's cluster for the WasmPlugin's storeCluster (EDS over mTLS in a
    cluster; one static endpoint, plain HTTP, here) with the outlier
    detection of its DestinationRule."""
    name = wp["spec"]["pluginConfig"]["storeCluster"]
    service = name.split("|")[3]
    cluster = {"name": name, "type": "STATIC", "connect_timeout": "10s", "lb_policy": "ROUND_ROBIN",
               "circuit_breakers": {"thresholds": [{"max_connections": 4294967295, "max_pending_requests": 4294967295,
                                                    "max_requests": 4294967295, "max_retries": 4294967295}]},
               "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                   {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}]}]}}
    rules = [d for d in docs.get("DestinationRule", []) if d["spec"]["host"] == service]
    for dr in rules:
        od = dr["spec"].get("trafficPolicy", {}).get("outlierDetection")
        if od:
            cluster["outlier_detection"] = {
                "consecutive_5xx": od["consecutive5xxErrors"], "enforcing_consecutive_5xx": 100,
                "consecutive_gateway_failure": od["consecutiveGatewayErrors"],
                "enforcing_consecutive_gateway_failure": 100,
                "interval": duration(od["interval"]), "base_ejection_time": duration(od["baseEjectionTime"]),
                "max_ejection_percent": od["maxEjectionPercent"]}
    return cluster


def placeholder_cluster(docs):
    """The VirtualService's destination (a MESH_EXTERNAL ServiceEntry in a
    cluster). Never used: the EnvoyFilter's route patch replaces it."""
    (dest,) = one(docs, "VirtualService")["spec"]["http"][0]["route"]
    name = destination_cluster(dest["destination"])
    return {"name": name, "type": "STATIC", "connect_timeout": "10s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 9}}}}]}]}}


def base_bootstrap(docs, ecds_path, port, admin_port, store_host, store_port):
    """The gateway's configuration before the EnvoyFilter."""
    wp = one(docs, "WasmPlugin")
    return {
        "node": {"id": "router~127.0.0.1~istio-ingressgateway-0.istio-system~istio-system.svc.cluster.local",
                 "cluster": "istio-ingressgateway.istio-system"},
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin_port}}},
        "static_resources": {
            "listeners": [gateway_listener(docs, wp, ecds_path, port)],
            "clusters": [store_cluster(docs, wp, store_host, store_port), placeholder_cluster(docs)],
        },
    }


# --- the EnvoyFilter ------------------------------------------------------------

# Oneof groups of the messages the patches touch: setting one member clears the others.
ONEOFS = [
    {"cluster", "cluster_header", "weighted_clusters", "cluster_specifier_plugin", "inline_cluster_specifier_plugin"},
    {"route", "redirect", "direct_response", "filter_action", "non_forwarding_action"},
    {"typed_config", "config_discovery"},
    {"rds", "route_config", "scoped_routes"},
    {"type", "cluster_type"},
    {"host_rewrite_literal", "auto_host_rewrite", "host_rewrite_header", "host_rewrite_path_regex"},
]
# Map fields: merge replaces their entries whole.
MAPS = {"typed_extension_protocol_options", "typed_per_filter_config", "filter_metadata", "typed_filter_metadata"}


def merge(dst, src):
    """Proto merge of src into dst (both as parsed from YAML)."""
    for key, value in src.items():
        for group in ONEOFS:
            if key in group:
                for sibling in group - {key}:
                    dst.pop(sibling, None)
        if key in MAPS:
            dst.setdefault(key, {}).update(copy.deepcopy(value))
        elif isinstance(value, list):
            dst[key] = dst.get(key, []) + copy.deepcopy(value)
        elif isinstance(value, dict) and "@type" not in value and isinstance(dst.get(key), dict):
            merge(dst[key], value)
        else:  # scalars, durations, and Any fields (their bytes) are replaced
            dst[key] = copy.deepcopy(value)
    return dst


def merge_typed_config(filt, value):
    """A filter MERGE: its typed_config is merged as the message it holds."""
    dst, src = filt.get("typed_config"), value.get("typed_config")
    if dst is None:
        return  # Istio skips filters configured over ECDS
    if src:
        # Istio would relabel src with dst's type and merge anyway: refused here.
        if dst["@type"] != src["@type"]:
            raise ValueError(f"MERGE into {filt['name']}: typed_config {src['@type']} does not match the filter's")
        merge(dst, {k: v for k, v in src.items() if k != "@type"})
    if value.get("name"):
        filt["name"] = value["name"]


def check_match(patch, allowed):
    """The applier knows these match fields; any other would be ignored silently."""
    def walk(obj, path):
        for key, value in obj.items():
            here = f"{path}.{key}" if path else key
            if isinstance(value, dict):
                walk(value, here)
            elif here not in allowed:
                raise NotImplementedError(f"{patch['applyTo']} match on {here} is not supported")
    walk(patch.get("match") or {}, "")


def applies(patch):
    return (patch.get("match") or {}).get("context", "ANY") in ("ANY", "GATEWAY")


def network_filter_name(patch):
    return ((patch.get("match") or {}).get("listener") or {}).get("filterChain", {}).get("filter", {}).get("name")


def sub_filter_name(patch):
    return ((patch.get("match") or {}).get("listener") or {}).get("filterChain", {}).get("filter", {}) \
        .get("subFilter", {}).get("name")


def patch_http_filters(filters, patches):
    for p in patches:
        value, op, sub = p["patch"]["value"], p["patch"]["operation"], sub_filter_name(p)
        names = [f["name"] for f in filters]
        if op == "INSERT_FIRST" or (op == "INSERT_BEFORE" and not sub):
            filters.insert(0, copy.deepcopy(value))
        elif op == "ADD" or (op == "INSERT_AFTER" and not sub):
            filters.append(copy.deepcopy(value))
        elif op in ("INSERT_BEFORE", "INSERT_AFTER"):
            if sub in names:
                filters.insert(names.index(sub) + (op == "INSERT_AFTER"), copy.deepcopy(value))
        elif op != "MERGE":
            raise NotImplementedError(f"HTTP_FILTER {op}")
    for p in patches:
        if p["patch"]["operation"] == "MERGE":
            for f in filters:
                if sub_filter_name(p) in (None, f["name"]):
                    merge_typed_config(f, p["patch"]["value"])


def apply_envoyfilter(bootstrap, envoyfilter):
    """Applies an EnvoyFilter's configPatches the way istiod does for a
    gateway: listeners (LISTENER, then NETWORK_FILTER, then HTTP_FILTER), the
    route configuration (VIRTUAL_HOST, then HTTP_ROUTE), clusters."""
    by_kind = {}
    for p in envoyfilter["spec"]["configPatches"]:
        if applies(p):
            by_kind.setdefault(p["applyTo"], []).append(p)
    unknown = set(by_kind) - {"LISTENER", "NETWORK_FILTER", "HTTP_FILTER", "VIRTUAL_HOST", "HTTP_ROUTE", "CLUSTER"}
    if unknown:
        raise NotImplementedError(f"applyTo {sorted(unknown)}")
    listener_keys = {"context", "listener.filterChain.filter.name"}
    for p in by_kind.get("LISTENER", []):
        check_match(p, {"context"})
    for p in by_kind.get("NETWORK_FILTER", []):
        check_match(p, listener_keys)
    for p in by_kind.get("HTTP_FILTER", []):
        check_match(p, listener_keys | {"listener.filterChain.filter.subFilter.name"})
    for p in by_kind.get("VIRTUAL_HOST", []):
        check_match(p, {"context", "routeConfiguration.vhost.name"})
    for p in by_kind.get("HTTP_ROUTE", []):
        check_match(p, {"context", "routeConfiguration.vhost.name", "routeConfiguration.vhost.route.name"})
    for p in by_kind.get("CLUSTER", []):
        check_match(p, {"context"})

    resources = bootstrap["static_resources"]
    for listener in resources["listeners"]:
        for p in by_kind.get("LISTENER", []):
            if p["patch"]["operation"] != "MERGE":
                raise NotImplementedError(f"LISTENER {p['patch']['operation']}")
            merge(listener, p["patch"]["value"])
        for chain in listener["filter_chains"]:
            for filt in chain["filters"]:
                for p in by_kind.get("NETWORK_FILTER", []):
                    if p["patch"]["operation"] != "MERGE":
                        raise NotImplementedError(f"NETWORK_FILTER {p['patch']['operation']}")
                    if network_filter_name(p) in (None, filt["name"]):
                        merge_typed_config(filt, p["patch"]["value"])
                if filt["name"] != HCM:
                    continue
                hcm = filt["typed_config"]
                patch_http_filters(hcm["http_filters"], [p for p in by_kind.get("HTTP_FILTER", [])
                                                         if network_filter_name(p) in (None, HCM)])
                for vhost in hcm["route_config"]["virtual_hosts"]:
                    patch_virtual_host(vhost, by_kind.get("VIRTUAL_HOST", []), by_kind.get("HTTP_ROUTE", []))
    for p in by_kind.get("CLUSTER", []):
        if p["patch"]["operation"] != "ADD":
            raise NotImplementedError(f"CLUSTER {p['patch']['operation']}")
        resources["clusters"].append(copy.deepcopy(p["patch"]["value"]))
    return bootstrap


def patch_virtual_host(vhost, vhost_patches, route_patches):
    def vhost_match(p):
        name = (p["match"].get("routeConfiguration") or {}).get("vhost", {}).get("name")
        return name in (None, vhost["name"])

    for p in vhost_patches:
        if p["patch"]["operation"] != "MERGE":
            raise NotImplementedError(f"VIRTUAL_HOST {p['patch']['operation']}")
        if vhost_match(p):
            merge(vhost, p["patch"]["value"])
    for p in route_patches:
        if p["patch"]["operation"] != "MERGE":
            raise NotImplementedError(f"HTTP_ROUTE {p['patch']['operation']}")
        name = (p["match"].get("routeConfiguration") or {}).get("vhost", {}).get("route", {}).get("name")
        for route in vhost["routes"]:
            if vhost_match(p) and name in (None, route.get("name")):
                merge(route, p["patch"]["value"])


def substitute(obj, replacements):
    """Every string equal to a key of `replacements` becomes its value."""
    if isinstance(obj, dict):
        return {k: substitute(v, replacements) for k, v in obj.items()}
    if isinstance(obj, list):
        return [substitute(v, replacements) for v in obj]
    return replacements.get(obj, obj) if isinstance(obj, str) else obj


def gateway_bootstrap(ecds_path, port, admin_port, store_lookup, upstream_wasm, ca_bundle, docs=None):
    """The ingress gateway's Envoy configuration, EnvoyFilter applied."""
    docs = docs or manifests()
    host, _, store_port = store_lookup.rpartition(":")
    bootstrap = base_bootstrap(docs, ecds_path, port, admin_port, host, int(store_port))
    apply_envoyfilter(bootstrap, one(docs, "EnvoyFilter"))
    return substitute(bootstrap, {UPSTREAM_WASM_IN_CLUSTER: str(upstream_wasm), CA_BUNDLE_IN_CLUSTER: str(ca_bundle)})


def generate(out_dir, port, admin_port, store_lookup, downstream_wasm, upstream_wasm, ca_bundle, resource_version,
             strip_meta=True):
    """Writes out_dir/envoy.yaml and out_dir/ecds.yaml; returns their paths."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = manifests()
    ecds = out_dir / "ecds.yaml"
    write_ecds(ecds, downstream_wasm, resource_version, docs, strip_meta)
    config = out_dir / "envoy.yaml"
    bootstrap = gateway_bootstrap(ecds, port, admin_port, store_lookup, upstream_wasm, ca_bundle, docs)
    # JSON (also YAML): Envoy's YAML reader would take a bare `n` or `y` for a boolean.
    write_atomically(config, json.dumps(bootstrap, indent=1))
    return config, ecds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--resource-version", required=True, help="the WasmPlugin's resource version")
    parser.add_argument("--downstream-wasm", type=Path, help="the module file the agent cached for the WasmPlugin")
    parser.add_argument("--ecds-only", action="store_true",
                        help="rewrite only DIR/ecds.yaml (a WasmPlugin update), atomically; its module "
                             "stays unless --downstream-wasm is given (and Envoy applies only a changed module)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--admin-port", type=int)
    parser.add_argument("--store-lookup", help="HOST:PORT of the key store's lookup API")
    parser.add_argument("--upstream-wasm", type=Path,
                        help=f"the module file at {UPSTREAM_WASM_IN_CLUSTER} in a cluster")
    parser.add_argument("--ca-bundle", type=Path, default=Path(CA_BUNDLE_IN_CLUSTER))
    args = parser.parse_args(argv)
    ecds = args.out_dir / "ecds.yaml"
    if args.ecds_only:
        module = args.downstream_wasm
        if module is None:
            (resource,) = yaml.safe_load(ecds.read_text())["resources"]
            module = resource["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"]
        write_ecds(ecds, Path(module).resolve(), args.resource_version)
        return 0
    missing = [name for name in ("port", "admin_port", "store_lookup", "downstream_wasm", "upstream_wasm")
               if getattr(args, name) is None]
    if missing:
        parser.error("missing " + ", ".join("--" + m.replace("_", "-") for m in missing))
    config, ecds = generate(args.out_dir, args.port, args.admin_port, args.store_lookup, args.downstream_wasm.resolve(),
                            args.upstream_wasm.resolve(), args.ca_bundle, args.resource_version)
    print(config)
    print(ecds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
