"""What an operator sees of a running server: request ids on every log line, text or JSON logs, an
access log line per RPC, Prometheus metrics (RPCs and engines), and OpenTelemetry spans.

`context`: the request a log line belongs to and the log formats; `rpc`: the interceptor that
names, times, counts and logs every call; `metrics`: the Prometheus side; `tracing`: the optional
OpenTelemetry side (the `otel` extra).
"""
