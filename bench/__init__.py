"""Speed benchmarks behind `lodestar bench ...` (`lodestar.bench`; never imported by `lodestar serve`).

Kept out of the engine packages and services/: served.py starts a real server, clients and Celery
workers, so it sits above services/ in the dependency order. This folder also holds the benchmark
scripts (run.sh, kernels.py, sts_texts.py, adapters/, compress/, specdec/) and results/: the
subfolders have no __init__.py, so they are not packages (the two top-level scripts install as
modules too, and run as scripts from a checkout as before).

served       served embedding throughput vs the in-process ceiling, search latency through a server,
             batch indexing in-process vs Celery workers (`lodestar bench embed|retrieve|index`)
retrieval    FAISS index types (QPS, recall@10), shard fan-out, the learned-sparse impact index
             (`lodestar bench retrieve|shards|sparse`)
tinymodel    the tiny random Llama of the tests and the chaos suite (built in code)
procs        a private redis-server and `lodestar worker` processes (bench index, the job tests)
"""
