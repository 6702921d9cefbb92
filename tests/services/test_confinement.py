"""Confinement without a race: `confine` opens the file once, walking from a media root's descriptor with
O_NOFOLLOW, and the stream reads that descriptor's inode (/proc/self/fd/N), never the name again.

Unit tests run on real directory trees (real symlinks, a real FIFO); the swap tests run a real server on a
real Redis and swap a directory of the root for a symlink to another video right after StartStream."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import grpc
import pytest

from services.client import Client, state_name
from services.errors import InvalidRequest, LimitExceeded, PathNotAllowed
from services.paths import MediaFile, confine
from streamer.errors import NotAVideo, SourceNotFound
from streamer.source import FileSource, probe
from testkit import media
from tests.conftest import wait_done
from tests.services.test_ingest_streams import assert_same_chunks, chunks_of

BIG = 1 << 40


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def fds_on(path: Path) -> int:
    """How many of this process's descriptors hold the inode `path` names now."""
    st = os.stat(path)
    n = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            other = os.stat(f"/proc/self/fd/{name}")
        except OSError:  # the listing's own descriptor, or one closed meanwhile
            continue
        n += (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino)
    return n


@pytest.fixture
def tree(tmp_path):
    """root/cam/video.mp4 (a real clip), root/notes.txt; outside/secret.mp4 next to the root."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "cam").mkdir(parents=True)
    outside.mkdir()
    media.synthetic_video(root / "cam" / "video.mp4", seconds=1, fps=10, scenes=1)
    (root / "notes.txt").write_text("notes\n")
    (outside / "secret.mp4").write_bytes(b"secret bytes outside the root\n")
    return root, outside


def refused(exc_type, source, roots, max_bytes=BIG) -> str:
    with pytest.raises(exc_type) as err:
        confine(source, roots, max_bytes)
    return str(err.value)


# ---- what is allowed, and what comes back ---------------------------------------------------------

def test_a_file_inside_is_opened_once_and_read_through_its_descriptor(tree):
    root, _ = tree
    video = root / "cam" / "video.mp4"
    original = video.read_bytes()
    for source in ("cam/video.mp4", str(video), "cam/./video.mp4", "cam/../cam/video.mp4", "./cam//video.mp4"):
        with confine(source, (root,), BIG) as f:
            assert isinstance(f, MediaFile)
            assert f.path == video and f.name == "video.mp4" and f.size == len(original)
            st, fst = video.stat(), os.fstat(f.fd)
            assert (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino)
            assert f.open_path == f"/proc/self/fd/{f.fd}"
        assert f.closed
    f = confine("cam/video.mp4", (root,), BIG)
    try:
        video.rename(root / "cam" / "moved.mp4")  # the name now leads nowhere, then to other bytes
        video.write_bytes(b"replaced")
        assert Path(f.open_path).read_bytes() == original  # same inode, never the name
        probe(f.open_path, name=f.name)  # PyAV reads it too
        with FileSource(f.open_path, name=f.name) as src:
            assert sum(1 for _ in src.frames()) == 10
    finally:
        f.close()


def test_mediafile_close_reopen_and_errors(tree):
    root, _ = tree
    before = fd_count()
    f = confine("cam/video.mp4", (root,), BIG)
    g = f.reopen()
    assert g.fd != f.fd and g.path == f.path
    assert os.path.samestat(os.fstat(g.fd), os.fstat(f.fd))
    f.close()
    f.close()  # idempotent
    assert f.closed and not g.closed
    with pytest.raises(ValueError):
        f.open_path
    assert Path(g.open_path).read_bytes() == (root / "cam" / "video.mp4").read_bytes()
    g.close()
    assert fd_count() == before


def test_relative_sources_are_taken_under_the_first_root(tree, tmp_path):
    root, _ = tree
    other = tmp_path / "other"
    other.mkdir()
    (other / "clip.mp4").write_bytes(b"other root")
    with confine(str(other / "clip.mp4"), (root, other), BIG) as f:
        assert f.path == other / "clip.mp4"
    assert "no such file" in refused(SourceNotFound, "clip.mp4", (root, other))


def test_a_link_above_the_root_picks_the_root_and_the_rest_is_walked_inside(tree, tmp_path):
    root, _ = tree
    alias = tmp_path / "alias-of-root"
    alias.symlink_to(root)
    with confine(str(alias / "cam" / "video.mp4"), (root,), BIG) as f:
        assert f.path == root / "cam" / "video.mp4"


# ---- symbolic links: followed only while the target stays in a root --------------------------------

def test_links_inside_a_root_to_inside_are_followed_and_the_real_path_is_shown(tree, tmp_path):
    root, _ = tree
    video = root / "cam" / "video.mp4"
    (root / "alias.mp4").symlink_to("cam/video.mp4")  # relative
    (root / "camlink").symlink_to(root / "cam")  # absolute, a directory
    (root / "cam" / "up.mp4").symlink_to("../cam/./video.mp4")
    (root / "chain.mp4").symlink_to("alias.mp4")  # a link to a link
    second = tmp_path / "second"
    second.mkdir()
    (second / "across.mp4").symlink_to(video)  # from one root into another
    for source, roots in (("alias.mp4", (root,)), ("camlink/video.mp4", (root,)), ("cam/up.mp4", (root,)),
                          ("chain.mp4", (root,)), (str(second / "across.mp4"), (root, second))):
        with confine(source, roots, BIG) as f:
            assert f.path == video, source
            assert os.path.samestat(os.fstat(f.fd), video.stat())


@pytest.mark.parametrize("make", [
    lambda root, out: (root / "evil.mp4").symlink_to(out / "secret.mp4"),  # absolute, to a file
    lambda root, out: (root / "evil.mp4").symlink_to("../outside/secret.mp4"),  # relative, climbing out
    lambda root, out: (root / "cam" / "evil.mp4").symlink_to(out),  # a directory, used as the file
])
def test_a_link_out_of_the_roots_is_refused(tree, make):
    root, outside = tree
    make(root, outside)
    source = "evil.mp4" if (root / "evil.mp4").is_symlink() else "cam/evil.mp4"
    msg = refused(PathNotAllowed, source, (root,))
    assert "outside the media roots" in msg and "VIGIL_MEDIA_ROOTS" in msg


def test_a_directory_link_out_of_the_roots_is_refused(tree):
    root, outside = tree
    (root / "out").symlink_to(outside)
    msg = refused(PathNotAllowed, "out/secret.mp4", (root,))
    assert "symbolic link 'out'" in msg and "VIGIL_MEDIA_ROOTS" in msg


def test_link_loops_are_invalid(tree):
    root, _ = tree
    (root / "a").symlink_to("b")
    (root / "b").symlink_to("a")
    (root / "self").symlink_to("self")
    for source in ("a", "self/video.mp4", "b/x/y"):
        assert "symbolic links" in refused(InvalidRequest, source, (root,))


# ---- outside, climbing out --------------------------------------------------------------------------

def test_outside_and_dot_dot_are_refused_naming_the_setting(tree):
    root, outside = tree
    for source in (str(outside / "secret.mp4"), "../outside/secret.mp4", "cam/../../outside/secret.mp4",
                   str(root) + "/../outside/secret.mp4", "/etc/passwd", "../../../../etc/passwd"):
        msg = refused(PathNotAllowed, source, (root,))
        assert "VIGIL_MEDIA_ROOTS" in msg and str(root) in msg, source


# ---- not regular files, bad names -------------------------------------------------------------------

def test_directories_fifos_and_devices_are_not_files(tree):
    root, _ = tree
    os.mkfifo(root / "pipe.mp4")
    assert "directory" in refused(InvalidRequest, "cam", (root,))
    assert "directory" in refused(InvalidRequest, str(root), (root,))
    assert "FIFO" in refused(InvalidRequest, "pipe.mp4", (root,))  # and it did not block waiting for a writer
    assert "device" in refused(InvalidRequest, "null", (Path("/dev"),))


def test_missing_files_and_non_directories_are_not_found(tree):
    root, _ = tree
    assert "no such file" in refused(SourceNotFound, "cam/nope.mp4", (root,))
    assert "no such file" in refused(SourceNotFound, "nodir/video.mp4", (root,))
    assert "'notes.txt' is not a directory" in refused(SourceNotFound, "notes.txt/video.mp4", (root,))
    (root / "dangling.mp4").symlink_to("gone.mp4")
    assert "no such file" in refused(SourceNotFound, "dangling.mp4", (root,))


def test_long_names_nul_and_urls_are_invalid_and_messages_stay_short(tree):
    root, _ = tree
    long_path = "cam/" + "x" * 5000 + ".mp4"
    msg = refused(InvalidRequest, long_path, (root,))
    assert "longer than 4096" in msg and len(msg) < 250
    long_component = "cam/" + "y" * 300 + ".mp4"
    msg = refused(InvalidRequest, long_component, (root,))
    assert "255" in msg and len(msg) < 250 and "y" * 90 in msg and "y" * 110 not in msg
    assert "NUL" in refused(InvalidRequest, "cam/video.mp4\x00.txt", (root,))
    assert "URL" in refused(InvalidRequest, "http://example.com/x.mp4", (root,))
    refused(InvalidRequest, "", (root,))


def test_over_max_bytes_is_a_limit(tree):
    root, _ = tree
    size = (root / "cam" / "video.mp4").stat().st_size
    msg = refused(LimitExceeded, "cam/video.mp4", (root,), max_bytes=size - 1)
    assert f"{size} bytes" in msg
    confine("cam/video.mp4", (root,), size).close()


def test_a_directory_the_server_may_not_search_is_permission_denied():
    """Real permissions: the check runs as an unprivileged user (a forked child drops root, if we are root)."""
    base = Path(tempfile.mkdtemp(prefix="vigil-perm-"))
    try:
        base.chmod(0o755)
        root = base / "root"
        (root / "locked").mkdir(parents=True)
        root.chmod(0o755)
        (root / "locked" / "video.mp4").write_bytes(b"x")
        (root / "locked").chmod(0o700)
        if os.geteuid() != 0:
            with pytest.raises(PathNotAllowed, match="permission denied"):
                confine("locked/video.mp4", (root,), BIG)
            return
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: no pytest, no threads of its own; report and leave
            try:
                os.close(read)
                os.setgid(65534)
                os.setuid(65534)
                try:
                    confine("locked/video.mp4", (root,), BIG).close()
                    out = "opened"
                except Exception as exc:
                    out = f"{type(exc).__name__}: {exc}"
                os.write(write, out.encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as r:
            out = r.read()
        os.waitpid(pid, 0)
        assert out.startswith("PathNotAllowed") and "permission denied" in out, out
    finally:
        (base / "root" / "locked").chmod(0o700)
        shutil.rmtree(base)


def test_no_descriptor_is_left_open_by_any_refusal(tree):
    root, _ = tree
    os.mkfifo(root / "pipe.mp4")
    (root / "loop").symlink_to("loop")
    (root / "out").symlink_to("..")
    (root / "deep").joinpath(*["d"] * 30).mkdir(parents=True)
    size = (root / "cam" / "video.mp4").stat().st_size
    cases = [("cam", BIG), ("pipe.mp4", BIG), ("loop", BIG), ("out/outside/secret.mp4", BIG),
             ("cam/nope.mp4", BIG), ("notes.txt/x", BIG), ("cam/" + "z" * 300, BIG), ("cam/video.mp4", size - 1),
             ("cam/../../x", BIG), ("deep/" + "d/" * 30 + "../" * 32 + "x", BIG)]
    before = fd_count()
    for _ in range(5):
        for source, max_bytes in cases:
            with pytest.raises((InvalidRequest, PathNotAllowed, SourceNotFound, LimitExceeded)):
                confine(source, (root,), max_bytes)
    assert fd_count() == before


def test_readers_show_the_users_name_not_the_proc_path(tree):
    root, _ = tree
    path = media.not_a_video(root / "cam" / "notes.mp4")
    with confine("cam/notes.mp4", (root,), BIG) as f:
        with pytest.raises(NotAVideo) as err:
            probe(f.open_path, name=f.name)
        assert "notes.mp4" in str(err.value) and "/proc/" not in str(err.value)
        pytest.importorskip("decord")
        from streamer.decord_source import DecordSource

        with pytest.raises(NotAVideo) as err:
            DecordSource(f.open_path, name=f.name)
        assert "notes.mp4" in str(err.value) and "/proc/" not in str(err.value)
    assert path.exists()


# ---- the swap, against a real server ----------------------------------------------------------------

@pytest.fixture
def swap_tree(tmp_path):
    """root/cam/video.mp4 (4 s) and a copy in root/base/; outside/video.mp4 is another clip (2 s, other size)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    video = media.synthetic_video(root / "cam" / "video.mp4", seconds=4, fps=10, scenes=2)
    (root / "base").mkdir()
    shutil.copyfile(video, root / "base" / "video.mp4")
    media.synthetic_video(outside / "video.mp4", seconds=2, fps=10, size=(128, 96), scenes=3)
    return root, outside


@pytest.mark.parametrize("reader", ["pyav", "decord"])
def test_a_swap_after_start_stream_changes_nothing(make_server, swap_tree, reader, redis_url, namespace):
    if reader == "decord":
        pytest.importorskip("decord")
    root, outside = swap_tree
    srv, addr = make_server(media_roots=(str(root),), reader=reader)
    video = root / "cam" / "video.mp4"
    with Client(addr) as c:
        base = wait_done(c, c.start(str(root / "base" / "video.mp4"), fps=2, clip_frames=4).stream_id)
        started = c.start(str(video), fps=2, clip_frames=4)
        (root / "cam").rename(root / "cam-away")  # right after StartStream returned: the name now leads out
        (root / "cam").symlink_to(outside)
        assert (root / "cam" / "video.mp4").resolve() == outside / "video.mp4"
        info = wait_done(c, started.stream_id)
    assert state_name(base.state) == state_name(info.state) == "finished", info.error
    assert info.source == str(video)
    assert info.frames == base.frames == 8  # 4 s at 2 fps (the clip outside: 2 s, 4 frames)
    assert info.chunks == base.chunks
    assert info.duration_s == base.duration_s > 3.0
    assert_same_chunks(chunks_of(redis_url, namespace, info.stream_id),
                       chunks_of(redis_url, namespace, base.stream_id), srv.rt.store.layout, srv.rt.store.fingerprint)
    assert fds_on(root / "cam-away" / "video.mp4") == 0  # the worker closed its descriptor when it ended


def test_a_swap_before_start_stream_is_refused(make_server, swap_tree):
    root, outside = swap_tree
    (root / "cam").rename(root / "cam-away")
    (root / "cam").symlink_to(outside)
    _, addr = make_server(media_roots=(str(root),))
    with Client(addr) as c:
        before = len(c.list())
        with pytest.raises(grpc.RpcError) as err:
            c.start(str(root / "cam" / "video.mp4"), fps=2, clip_frames=4)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "VIGIL_MEDIA_ROOTS" in err.value.details()
        assert len(c.list()) == before
    assert fds_on(outside / "video.mp4") == 0


def test_a_start_refused_after_confine_closes_the_descriptor(make_server, swap_tree):
    root, _ = swap_tree
    video = root / "cam" / "video.mp4"
    notes = media.not_a_video(root / "notes.mp4")
    _, addr = make_server(media_roots=(str(root),), max_source_duration_s=1.0)
    with Client(addr) as c:
        with pytest.raises(grpc.RpcError) as err:  # the duration limit, after the probe
            c.start(str(video), fps=2, clip_frames=4)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "video.mp4" in err.value.details()
        with pytest.raises(grpc.RpcError) as err:  # the probe itself
            c.start(str(notes), fps=2, clip_frames=4)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "notes.mp4" in err.value.details()
        assert "/proc/" not in err.value.details()
    assert fds_on(video) == 0 and fds_on(notes) == 0


def test_the_stream_limit_closes_the_descriptor(make_server, tmp_path):
    root = tmp_path / "root"
    long = media.synthetic_video(root / "long.mp4", seconds=30, fps=10, scenes=2)
    short = media.synthetic_video(root / "short.mp4", seconds=2, fps=10, scenes=1)
    _, addr = make_server(media_roots=(str(root),), max_streams=1)
    with Client(addr) as c:
        first = c.start(str(long), fps=2, clip_frames=4)
        try:
            with pytest.raises(grpc.RpcError) as err:
                c.start(str(short), fps=2, clip_frames=4)
            assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert fds_on(short) == 0
        finally:
            c.stop(first.stream_id)
        assert state_name(wait_done(c, first.stream_id).state) == "stopped"
    assert fds_on(long) == 0
