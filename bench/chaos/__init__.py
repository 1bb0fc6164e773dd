"""The chaos and fuzz suite (`make chaos`): a fuzzer over every RPC's request descriptor, overload with
hundreds of clients, SIGKILL rounds during writes and SIGTERM rounds under load, against real servers
on loopback. `python -m lodestar.bench.chaos.run` runs it and writes bench/results/chaos.json; the
tests run a small part of it (tests/integration/test_chaos.py)."""
