"""The `vigil` command line: serve, ingest, push, watch, ask, chat, summarize, streams, stop, delete, demo, mcp.

`main` is the console script (pyproject.toml): it parses the command line (parser.py), runs the command
(serve.py; streams.py: ingest, push, watch, streams, stop, delete; questions.py: ask, chat, summarize; demo.py; mcp.py)
and turns what went wrong into one `error: ...` line (errors.py) and the exit status: 0 done, 1 the stream failed,
2 an error, 130 interrupted. What the commands print is in render.py; their `--json` is each message as
`services.client.as_json` renders it, as the HTTP API serves it."""
from __future__ import annotations

import logging
import os
import sys
import warnings

import grpc

from services.cli import across, demo, errors, mcp, questions, serve, streams
from services.cli.parser import build_parser

COMMANDS = {
    "serve": serve.cmd_serve, "ingest": streams.cmd_ingest, "push": streams.cmd_push, "watch": streams.cmd_watch,
    "streams": streams.cmd_streams, "stop": streams.cmd_stop, "delete": streams.cmd_delete,
    "ask": across.cmd_ask, "chat": questions.cmd_chat, "summarize": questions.cmd_summarize, "demo": demo.cmd_demo,
    "search": across.cmd_search, "report": across.cmd_report,  # across cameras (across.py)
    "mcp": mcp.cmd_mcp,
}

__all__ = ["build_parser", "main"]


def _quiet_warnings() -> None:
    """No library warnings on ordinary runs: transformers' `past_key_values` FutureWarning is about the adapters'
    call style (a later change removes its cause); -v shows everything."""
    warnings.filterwarnings("ignore", message=r".*`past_key_values` is deprecated", category=FutureWarning)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:
        _quiet_warnings()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from services import logs

    logs.install()  # no URL's credentials in any log line (vigil's, PyAV's, grpc's)
    from pydantic import ValidationError

    try:
        return COMMANDS[args.cmd](args)
    except ValidationError as exc:  # a bad VIGIL_* setting: one line each, naming the variable, no value echoed
        for line in errors.setting_messages(exc):
            print(line, file=sys.stderr)
        return 2
    except grpc.RpcError as exc:
        print(errors.rpc_message(exc, args), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `vigil ... | head` closed the pipe: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush has nowhere to fail
        return 0
    except Exception as exc:
        from encoders.loading import ModelUnavailable
        from memory.errors import InvalidMemoryOptions
        from services.config import ConfigFileError

        if isinstance(exc, (ModelUnavailable, RuntimeError, FileNotFoundError, InvalidMemoryOptions,
                            ConfigFileError)):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise
