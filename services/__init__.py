"""Processes: gRPC servicers, server factory, interceptor, settings, CLI, client."""
