"""Thin gRPC servicers, pipelines that wire the stages, config at the process edge, the CLI."""
