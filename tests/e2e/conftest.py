import datetime
import uuid

import pytest

from harness import Envoy, Store
from mockprovider import MockProvider

STACKS = []


@pytest.fixture(scope="session")
def mocks():
    ms = {name: MockProvider(name).start() for name in ("openai", "anthropic", "vllm")}
    yield ms
    for m in ms.values():
        m.stop()


def provision(store, mocks):
    """Points the built-in providers at the mocks, registers a custom provider,
    and creates managed (default) credentials. Returns the provider-key ids."""
    store.ok("PATCH", "/providers/openai", {"baseUrl": mocks["openai"].base + "/v1"})
    store.ok("PATCH", "/providers/anthropic", {"baseUrl": mocks["anthropic"].base + "/v1"})
    store.ok("POST", "/providers", {"providerId": "my-vllm", "name": "Self-hosted vLLM", "baseUrl": mocks["vllm"].base + "/v1", "format": "openai"})

    def make(provider, value, managed=True):
        body = {"providerId": provider, "name": f"{provider} key", "value": value, "managed": managed}
        return store.ok("POST", "/provider-keys", body)["id"]

    return {
        "openai": make("openai", "sk-openai-managed-" + uuid.uuid4().hex),
        "anthropic": make("anthropic", "sk-ant-managed-" + uuid.uuid4().hex),
        "my-vllm": make("my-vllm", "vllm-secret-" + uuid.uuid4().hex, managed=False),
    }


def start_store(tmp_path_factory_or_path, mocks):
    base = tmp_path_factory_or_path
    path = base.mktemp("store") if hasattr(base, "mktemp") else base / "store"
    s = Store(path / "data").start()
    STACKS.append(s)
    keys = provision(s, mocks)
    return s, keys


def start_gateway(workdir, store, **env):
    e = Envoy(workdir, store.lookup_port, store.gateway_token, concurrency=env.pop("concurrency", 2),
              extra_env={k: str(v) for k, v in env.items()}).start()
    STACKS.append(e)
    return e


@pytest.fixture(scope="session")
def _store_and_keys(tmp_path_factory, mocks):
    s, keys = start_store(tmp_path_factory, mocks)
    yield s, keys
    s.stop()


@pytest.fixture(scope="session")
def store(_store_and_keys):
    return _store_and_keys[0]


@pytest.fixture(scope="session")
def provider_keys(_store_and_keys):
    return _store_and_keys[1]


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, store, provider_keys):
    e = start_gateway(tmp_path_factory.mktemp("envoy"), store)
    yield e
    e.stop()


@pytest.fixture(autouse=True)
def clean_mocks(mocks):
    for m in mocks.values():
        m.reset()



def future(seconds):
    return (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


def pytest_configure(config):
    config.addinivalue_line("markers", "canary: the secret sweep; runs after every other test")


def pytest_collection_modifyitems(items):
    # The canary sweep looks at what every other test left behind.
    items.sort(key=lambda item: item.get_closest_marker("canary") is not None)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for proc in STACKS:
            path = getattr(proc, "log_path", None)
            if path and path.exists():
                tail = "\n".join(path.read_text(errors="replace").splitlines()[-40:])
                report.sections.append((f"log {path.name}", tail))
