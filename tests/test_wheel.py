"""The package as a user installs it: a wheel built from the checkout, installed into a fresh virtual environment
outside the repository, runs `vigil demo` (its .proto files and static files inside, nothing written into the
installation). The demo starts its own private redis-server and stops it: none of its children outlives it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _children_of_tmp(tmp: Path) -> list[str]:
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout.splitlines()
    return [line for line in ps if "redis-server" in line and str(tmp) in line]


@pytest.mark.timeout(600)
def test_the_wheel_installed_outside_the_checkout_runs_the_demo(tmp_path, cache_dir):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(dist)], check=True, cwd=tmp_path, capture_output=True)
    (wheel,) = dist.glob("vigil-*.whl")
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    # the dependencies (torch, transformers, ...) from this environment's site-packages, as a plain path: its
    # .pth files (this checkout's editable install among them) are not read, so `vigil` comes from the wheel
    (purelib / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q",
                    str(wheel)], check=True, capture_output=True)
    where = subprocess.run([str(py), "-c", "import services, vigil_api; print(services.__file__)"], cwd=tmp_path,
                           check=True, capture_output=True, text=True).stdout.strip()
    assert where.startswith(str(purelib)), f"services imported from {where}, not the installed wheel"
    installed = sorted(p for p in purelib.rglob("*") if p.is_file())

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VIGIL_")}
    env.update(VIGIL_CACHE_DIR=str(cache_dir / "vigil"), VIGIL_HTTP_PORT="0", TMPDIR=str(tmp))
    proc = subprocess.run([str(env_dir / "bin" / "vigil"), "demo", "--json"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    # 48 sampled frames in clips of 8, cut-aligned at the 3 scene changes (frames 12, 24, 36): 8 clips
    assert out["stream"]["state"] == "finished" and out["stream"]["chunks"] == 8
    assert out["answer"] and out["random_weights"] is True
    assert out["latency_ms"] > 0
    assert len(out["evidence"]) == 4 and all(e["end_s"] > e["start_s"] for e in out["evidence"])
    assert not _children_of_tmp(tmp), "the demo's private redis-server outlived it"
    after = sorted(p for p in purelib.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert after == [p for p in installed if "__pycache__" not in p.parts], "the demo wrote into the installation"
