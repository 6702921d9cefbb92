"""The `vigil` command line's arguments: one parser, a subparser per command, and the flags several commands take
defined once (`FLAGS`, `client_flags`, `memory_flags`). What each command does is in serve.py, streams.py,
questions.py and demo.py (services/cli/__init__.py maps a command's name to it)."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

DEFAULT_SERVER = "127.0.0.1:50051"
STREAM_ID_HELP = "the stream's id (`vigil streams` lists them)"
DEMO_QUESTION = "When did the sign say that the truck had arrived?"


def media_time(text: str) -> float:
    """A media time for --since/--until: seconds ("90", "90.5"), mm:ss ("1:30") or hh:mm:ss ("1:02:03")."""
    parts = text.strip().split(":")
    usage = f"{text!r} is not a media time: give seconds (90), mm:ss (1:30) or hh:mm:ss (1:02:03)"
    if len(parts) > 3 or not all(p.strip() for p in parts):
        raise argparse.ArgumentTypeError(usage)
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(usage) from None
    if any(not n < float("inf") for n in nums):  # nan, inf
        raise argparse.ArgumentTypeError(usage)
    if any(n < 0 for n in nums):
        raise argparse.ArgumentTypeError(f"{text!r} is not a media time: a time is 0 or more seconds into the video")
    if any(n >= 60 for n in nums[1:]) or any(n != int(n) for n in nums[:-1]):
        raise argparse.ArgumentTypeError(usage + "; minutes and seconds after a colon are whole numbers below 60")
    return sum(n * 60 ** i for i, n in enumerate(reversed(nums)))


def frame_rate(text: str) -> float:
    """--fps: frames sampled per second, a number in (0, 30] (0 would sample nothing; the server refuses more)."""
    try:
        fps = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of frames per second") from None
    if not 0 < fps <= 30:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r}: frames per second must be more than 0 and at most 30 (leave "
                                         "--fps out for the server's VIGIL_FPS)")
    return fps


def image_file(text: str) -> str:
    """An --example still: an existing JPEG or PNG file (checked by its first bytes, before anything is sent)."""
    path = Path(text).expanduser()
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{path}: no such file")
    with open(path, "rb") as fh:
        head = fh.read(8)
    if not (head.startswith(b"\xff\xd8\xff") or head.startswith(b"\x89PNG\r\n\x1a\n")):
        raise argparse.ArgumentTypeError(f"{path} is not an image: give a JPEG or PNG still (a frame of the scene "
                                         "to find)")
    return text


def comma_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


# the flags several commands take, each defined once (a command may override its help or default: `add`)
FLAGS: dict[str, dict] = {
    "--fps": dict(type=frame_rate, help="frames sampled per second (default: the server's VIGIL_FPS)"),
    "--clip-frames": dict(type=int, help="sampled frames per chunk (default: the server's VIGIL_CLIP_FRAMES)"),
    "--top-k": dict(type=int, default=0, help="evidence chunks to answer from (default: the server's VIGIL_TOP_K)"),
    "--since": dict(type=media_time, help="media time window start: seconds, mm:ss or hh:mm:ss"),
    "--until": dict(type=media_time, help="media time window end: seconds, mm:ss or hh:mm:ss"),
    "--max-new-tokens": dict(type=int, default=0, help="longest answer, in tokens (default: the server's "
                             "VIGIL_MAX_NEW_TOKENS)"),
    "--keyframes-dir": dict(help="write evidence keyframes (JPEG) here"),
    "--model": dict(help='"tiny" (random weights), a local model folder or a Hugging Face id '
                    "(default: VIGIL_MODEL__NAME, else tiny)"),
    "--json": dict(action="store_true", help="machine-readable output (JSON)"),
}


def add(sp: argparse.ArgumentParser, *flags: str, **overrides) -> None:
    """Add shared flags (FLAGS) to a command, in the order given; `overrides` replace their settings."""
    for flag in flags:
        sp.add_argument(flag, **{**FLAGS[flag], **overrides})


def client_flags(sp: argparse.ArgumentParser) -> None:
    """Where the server is and how to reach it (--server, TLS), and --json: every command that calls a server."""
    sp.add_argument("--server", default=os.environ.get("VIGIL_SERVER", DEFAULT_SERVER),
                    help="the server's host:port; a host alone means port 50051 [VIGIL_SERVER]")
    g = sp.add_argument_group("TLS (any of these turns it on; the token is read from VIGIL_AUTH_TOKEN)")
    g.add_argument("--tls", action="store_true", help="use TLS, trusting the system's CAs")
    g.add_argument("--tls-ca", default=os.environ.get("VIGIL_TLS_CA"), metavar="PEM",
                   help="CA bundle to trust the server's certificate by [VIGIL_TLS_CA]")
    g.add_argument("--tls-cert", default=os.environ.get("VIGIL_TLS_CERT"), metavar="PEM",
                   help="client certificate, for servers that require one (mutual TLS) [VIGIL_TLS_CERT]")
    g.add_argument("--tls-key", default=os.environ.get("VIGIL_TLS_KEY"), metavar="PEM",
                   help="the client certificate's private key [VIGIL_TLS_KEY]")
    g.add_argument("--tls-server-name", default=os.environ.get("VIGIL_TLS_SERVER_NAME"), metavar="NAME",
                   help="name to check the server's certificate against (default: --server's host) "
                        "[VIGIL_TLS_SERVER_NAME]")
    add(sp, "--json")


# older spellings of a memory flag, kept working
MEMORY_FLAG_ALIASES = {"kv_int8": ("--int8",), "retention_mode": ("--retention",)}


def memory_flags(sp: argparse.ArgumentParser) -> None:
    """One flag per memory option (memory.options.MemoryOptions: names, help, choices); unset: server default."""
    from dataclasses import fields

    from memory.options import MemoryOptions

    g = sp.add_argument_group("memory (unset: the server's VIGIL_MEMORY__* defaults)")
    for f in fields(MemoryOptions):
        kind, choices = type(f.default), f.metadata.get("choices")
        flags = (f"--{f.name.replace('_', '-')}", *MEMORY_FLAG_ALIASES.get(f.name, ()))
        help = f"{f.metadata['description']} [VIGIL_MEMORY__{f.name.upper()}]".replace("%", "%%")
        if kind is bool:
            g.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help)
        elif choices:
            g.add_argument(*flags, dest=f.name, choices=list(choices), default=None, help=help)
        else:
            g.add_argument(*flags, dest=f.name, type=kind, default=None, metavar=f.name.split("_")[-1].upper(),
                           help=help)


def memory_options(args):
    """MemoryOptions (the proto message) from the command line; unset flags leave the server's defaults."""
    from memory.options import option_names
    from services import memory_wire

    return memory_wire.overrides_to_proto(**{name: getattr(args, name, None) for name in option_names()})


def window(args) -> tuple[float, float] | None:
    """--since/--until as a request's window (end 0: to the end), or None when neither is given."""
    return (args.since or 0.0, args.until or 0.0) if (args.since or args.until) else None


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Every option's help ends with its default, unless the help says it already or there is none to show."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, [], argparse.SUPPRESS) or "default" in text or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    """The parser of `vigil` and of each command (argparse builds subcommands with the parent's class)."""

    def __init__(self, *args, formatter_class=_Help, **kwargs) -> None:
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """`vigil`'s parser; the command's name is in `args.cmd`."""
    p = _Parser(prog="vigil", description="Streaming long-video understanding service. Exit status: 0 done, "
                "1 the stream failed (ingest, push: its error is printed), 2 an error (usage, connection, a refused "
                "request), 130 interrupted.")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = p.add_subparsers(dest="cmd", required=True)

    sp = sub.add_parser("serve", help="run the server: gRPC (streams, questions) and HTTP (/metrics)",
                        description="Run the server until Ctrl-C / SIGTERM: gRPC for streams and questions, HTTP for "
                        "/metrics. Unset options take VIGIL_* settings (docs/configuration.md). It prints where "
                        "it listens and \"ready\".")
    sp.add_argument("--host", help="address to listen on, both ports (default: VIGIL_HOST, else 127.0.0.1)")
    sp.add_argument("--port", type=int, help="gRPC port; 0: any free one (default: VIGIL_PORT, else 50051)")
    sp.add_argument("--http-port", type=int, help="HTTP port (/metrics); 0 turns it off, -1 any free one "
                    "(default: VIGIL_HTTP_PORT, else 8080)")
    sp.add_argument("--role", choices=["all", "ingest", "qa"], help="all: streams and questions; ingest: streams "
                    "only; qa: questions only (default: VIGIL_ROLE, else all)")
    add(sp, "--model")

    sp = sub.add_parser("ingest", help="start a stream from a file path or an rtsp:// URL")
    sp.add_argument("source", help="a video file under the server's VIGIL_MEDIA_ROOTS, or an rtsp:// URL")
    add(sp, "--fps", "--clip-frames")
    sp.add_argument("--wait", action="store_true", help="wait for the stream to finish, with a progress bar")
    memory_flags(sp)
    client_flags(sp)

    sp = sub.add_parser("push", help="send a local video file's bytes to the server as a stream",
                        description="Send a local file over PushStream (the server needs no access to it). MPEG-TS "
                        "and fragmented MP4 go as they are; any other file PyAV reads (a plain MP4, MKV, ...) is "
                        "remuxed into MPEG-TS as it is sent (packets copied, no re-encoding).")
    sp.add_argument("file", help="the video file to send")
    sp.add_argument("--format", choices=["auto", "mpegts", "mp4"], default="auto",
                    help="auto: detect, remuxing when needed; mpegts / mp4 (fragmented): send as it is")
    sp.add_argument("--name", help="shown as the stream's source, push:NAME (default: the file's name); a name a "
                    "camera could have (letters, digits, _ - .) also names the stream in ask, watch, stop, delete "
                    "(the newest push of that name), as a camera's name does")
    add(sp, "--fps", "--clip-frames")
    sp.add_argument("--live", action="store_true", help="drop frames when behind instead of pacing the push")
    sp.add_argument("--realtime", action="store_true", help="send the file at its own frame rate, as a camera "
                    "would (it takes as long as the video runs; with --live: a camera's feed)")
    memory_flags(sp)
    client_flags(sp)

    sp = sub.add_parser("watch", help="follow a stream's state changes, gaps and progress until it ends")
    sp.add_argument("stream_id", help=STREAM_ID_HELP)
    client_flags(sp)

    sp = sub.add_parser("ask", help="ask a question about a stream, or across cameras (a,b / all / @group)")
    sp.add_argument("stream_id", help=STREAM_ID_HELP + "; several cameras: names separated by commas, \"all\" or "
                    "@GROUP (the answer names each camera)")
    sp.add_argument("question", help="the question; time words in it "
                    "(\"in the first minute\", \"at 1:30\") narrow the search")
    add(sp, "--top-k", "--since", "--until", "--max-new-tokens", "--keyframes-dir")
    sp.add_argument("--example", type=image_file,
                    help="search by example: a JPEG/PNG still; chunks are retrieved by similarity to it")
    sp.add_argument("--signals", type=comma_list, default=[],
                    help="retrieval signals to use, comma-separated: kv, ocr, labels, image, mean (default: all, fused)")
    client_flags(sp)

    sp = sub.add_parser("chat", help="an interactive conversation about a stream: questions from stdin, one a line")
    sp.add_argument("stream_id", help=STREAM_ID_HELP)
    add(sp, "--top-k", "--since", "--until", "--max-new-tokens")
    client_flags(sp)

    sp = sub.add_parser("summarize", help="a time-stamped summary of a stream's window, from its memory")
    sp.add_argument("stream_id", help=STREAM_ID_HELP)
    add(sp, "--since", "--until")
    sp.add_argument("--detail", type=int, default=0, help="segments to aim for (default: the server's)")
    add(sp, "--max-new-tokens", help="per segment summary and for the overview")
    add(sp, "--keyframes-dir", help="write each segment's evidence keyframes (JPEG) here")
    client_flags(sp)

    sp = sub.add_parser("streams", help="list every stream: id, state, chunks, frames, video covered, memory")
    client_flags(sp)

    sp = sub.add_parser("stop", help="stop a running stream; what it stored stays answerable")
    sp.add_argument("stream_id", help=STREAM_ID_HELP)
    client_flags(sp)

    sp = sub.add_parser("delete", help="delete a stream and everything stored of it (stops it first)")
    sp.add_argument("stream_id", help=STREAM_ID_HELP)
    client_flags(sp)

    sp = sub.add_parser("mcp", help="an MCP server on stdin/stdout for agents, using the vigil server --server names",
                        description="Serve the Model Context Protocol on stdin/stdout (for an agent's MCP client "
                        "configuration): tools to list streams, ask a camera, summarize a window, show a "
                        "keyframe, search and ask across cameras, report a time range and wait for alerts, each "
                        "calling the vigil server --server names (token: VIGIL_AUTH_TOKEN). "
                        "`vigil serve` also serves it over streamable HTTP at /mcp on its HTTP port.")
    client_flags(sp)

    sp = sub.add_parser("demo", help="one process: start a server, ingest a video, ask, print answer and evidence")
    sp.add_argument("--video", help="a video file (default: a generated test pattern)")
    sp.add_argument("--question", help=f"default for the generated video: {DEMO_QUESTION!r}")
    add(sp, "--fps", default=2.0, help="frames sampled per second")
    add(sp, "--model", "--keyframes-dir")
    add(sp, "--json", help="machine-readable output (one JSON object)")
    across_commands(sub)
    return p


# ---- across cameras: `vigil search`, `vigil report` (services/cli/across.py runs them) -----------------------

SELECT_HELP = ("cameras: names or stream ids separated by commas, \"all\" (default) or @GROUP (a camera group of "
               "the server's config file)")


def across_flags(sp: argparse.ArgumentParser) -> None:
    """The selector and window flags of search / report / ask across cameras."""
    g = sp.add_argument_group("window (at most one kind; default: the question's own time words, else everything)")
    g.add_argument("--since", help="wall-clock start, read by the server (\"18:00\", \"yesterday 22:00\"); live "
                   "cameras only")
    g.add_argument("--until", help="wall-clock end (with --since)")
    g.add_argument("--when", default="", help="time words: \"last night\", \"in the last hour\", \"since 22:00\"")
    g.add_argument("--media-since", type=media_time, help="media time window start: seconds, mm:ss or hh:mm:ss")
    g.add_argument("--media-until", type=media_time, help="media time window end")


def across_commands(sub) -> None:
    """`vigil search` and `vigil report` (the parser's subparsers)."""
    sp = sub.add_parser("search", help="find moments across cameras: ranked by how well they match the question",
                        description="Search every camera (or those named) at once; each moment names its camera, "
                        "media and wall-clock time, score and the signals that found it.")
    sp.add_argument("question", help="what to find (text on screen, an object, an event)")
    sp.add_argument("--cameras", default="all", help=SELECT_HELP)
    add(sp, "--top-k", help="moments to return across all cameras (default: the server's VIGIL_TOP_K)")
    add(sp, "--keyframes-dir")
    sp.add_argument("--example", type=image_file, help="search by example: a JPEG/PNG still")
    sp.add_argument("--signals", type=comma_list, default=[], help="retrieval signals, comma-separated")
    across_flags(sp)
    client_flags(sp)

    sp = sub.add_parser("report", help="what happened in a time range across cameras: per camera segments, then "
                        "an overview", description="`vigil report --since 18:00`: each camera's segments with "
                        "activity summarised, each camera's summary, then one overview.")
    sp.add_argument("--cameras", default="all", help=SELECT_HELP)
    sp.add_argument("--detail", type=int, default=0, help="segments per camera to aim for (default: the server's)")
    add(sp, "--max-new-tokens", help="per segment summary and for the overviews")
    across_flags(sp)
    client_flags(sp)
