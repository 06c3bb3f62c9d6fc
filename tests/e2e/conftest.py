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


@pytest.fixture(scope="session")
def store(tmp_path_factory, mocks):
    s = Store(tmp_path_factory.mktemp("store") / "data").start()
    STACKS.append(s)
    s.ok("PATCH", "/providers/openai", {"baseUrl": mocks["openai"].base + "/v1"})
    s.ok("PATCH", "/providers/anthropic", {"baseUrl": mocks["anthropic"].base + "/v1"})
    s.ok("POST", "/providers", {"providerId": "my-vllm", "name": "Self-hosted vLLM", "baseUrl": mocks["vllm"].base + "/v1", "format": "openai"})
    yield s
    s.stop()


@pytest.fixture(scope="session")
def provider_keys(store):
    """Managed (default) credentials for the built-in providers, one for the custom one."""
    def make(provider, value, managed=True):
        return store.ok("POST", "/provider-keys", {"providerId": provider, "name": f"{provider} key", "value": value, "managed": managed})["id"]
    return {
        "openai": make("openai", "sk-openai-managed-" + uuid.uuid4().hex),
        "anthropic": make("anthropic", "sk-ant-managed-" + uuid.uuid4().hex),
        "my-vllm": make("my-vllm", "vllm-secret-" + uuid.uuid4().hex, managed=False),
    }


@pytest.fixture(scope="session")
def gateway(tmp_path_factory, store, provider_keys):
    e = Envoy(tmp_path_factory.mktemp("envoy"), store.lookup_port, store.gateway_token, concurrency=2).start()
    STACKS.append(e)
    yield e
    e.stop()


@pytest.fixture(autouse=True)
def clean_mocks(mocks):
    for m in mocks.values():
        m.reset()



def future(seconds):
    return (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")


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
