"""keygate loaded the way Istio loads it, without a cluster: an Envoy with the
ingress gateway's shape that scripts/istio_gateway.py generates from
deploy/istio — the WasmPlugin's downstream half over ECDS (a watched file
standing in for istio-agent's ADS stream), the EnvoyFilter's upstream half
in its own VM, the VirtualService's retry policy."""

import hashlib
import importlib.util
import shutil
from pathlib import Path

from harness import ROOT, WASM, EnvoyProcess, free_port, http, wait_until

_spec = importlib.util.spec_from_file_location("istio_gateway", ROOT / "scripts" / "istio_gateway.py")
istio_gateway = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(istio_gateway)

DOCS = istio_gateway.manifests()
PLUGIN = istio_gateway.one(DOCS, "WasmPlugin")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


class IstioGateway(EnvoyProcess):
    """An Envoy configured as Istio's ingress gateway for deploy/istio."""

    def __init__(self, workdir, store, module=WASM, upstream_module=WASM, concurrency=2, resource_version="1",
                 strip_meta=True):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.admin_port = free_port()
        self.store = store
        self.upstream_module = Path(upstream_module)
        self.concurrency = concurrency
        self.config_dir = self.workdir / f"istio-gateway-{self.port}"
        self.log_path = self.workdir / f"istio-gateway-{self.port}.log"
        self.ecds_path = self.config_dir / "ecds.yaml"
        self.resource_version = resource_version
        # False: an agent older than Istio 1.18, which leaves
        # ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION in the VM's environment.
        self.strip_meta = strip_meta
        self.module = self.agent_fetch(module)

    def agent_fetch(self, module, image_digest=None):
        """Copies a module where istio-agent keeps what it pulled for the
        plugin's URL: <cache>/<sha256(url)>/<image digest>.wasm (a rebuilt
        image holding the same module has a new digest, so a new path)."""
        data = Path(module).read_bytes()
        digest = image_digest or hashlib.sha256(data).hexdigest()
        directory = self.workdir / "wasm-cache" / hashlib.sha256(PLUGIN["spec"]["url"].encode()).hexdigest()
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{digest}.wasm"
        shutil.copyfile(module, path)
        return path

    def start(self):
        istio_gateway.generate(self.config_dir, self.port, self.admin_port, f"127.0.0.1:{self.store.lookup_port}",
                               self.module, self.upstream_module, CA_BUNDLE, self.resource_version, self.strip_meta)
        env = {"PATH": "/usr/bin:/bin", "KEYGATE_GATEWAY_TOKEN": self.store.gateway_token}
        return self.launch(self.config_dir / "envoy.yaml", env, what="the Istio gateway ready")

    def ecds_configs(self):
        """The extension configurations Envoy applied: [{name, version, module}]."""
        doc = http("GET", f"http://127.0.0.1:{self.admin_port}/config_dump?resource=ecds_filters")[1]
        out = []
        for entry in doc.get("configs", []):
            ext = entry["ecds_filter"]
            vm = ext["typed_config"]["config"]["vm_config"]
            env = (vm.get("environment_variables") or {}).get("key_values") or {}
            out.append({"name": ext["name"], "version": entry.get("version_info"),
                        "module": vm["code"]["local"]["filename"],
                        "env_version": env.get("ISTIO_META_WASM_PLUGIN_RESOURCE_VERSION")})
        return out

    def update_plugin(self, resource_version, module=None):
        """A WasmPlugin update as istio-agent hands it over, with the module
        file it fetched; returns once Envoy has applied it. A new module file
        is what makes an update Envoy sees: the agent strips the resource
        version from the config, and Envoy skips an unchanged one."""
        module = Path(module or self.module)
        if module == self.module and self.strip_meta:
            raise ValueError("Envoy would skip this update: the config it sees is unchanged")
        self.module = module
        istio_gateway.write_ecds(self.ecds_path, self.module, resource_version, DOCS, self.strip_meta)
        self.resource_version = resource_version
        wait_until(lambda: [(c["version"], c["module"]) for c in self.ecds_configs()]
                   == [(resource_version, str(self.module))], timeout=10, what=f"ECDS version {resource_version}")


def leb128(n):
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def rebuilt(module, build, out_dir):
    """`module` with a custom section naming `build`: the same code in other
    bytes, as a new release of the filter looks to Envoy (a new VM)."""
    name = b"keygate-test-build"
    payload = leb128(len(name)) + name + build.encode()
    path = Path(out_dir) / f"keygate_filter-{build}.wasm"
    path.write_bytes(Path(module).read_bytes() + b"\x00" + leb128(len(payload)) + payload)
    return path
