# One image for the API and the worker (docker-compose.yml picks the command). The CUDA build
# of torch runs on GPU hosts (NVIDIA container toolkit) and on CPU-only hosts alike.

# --- builder: a virtual environment with the project and its pinned torch ------------------
# Both stages use the same base: the venv's interpreter links to its python.
FROM python:3.11-slim-bookworm AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/lsq
ENV PATH=/opt/lsq/bin:$PATH
# torch first and alone, pinned as in pyproject.toml (a test checks they agree): a layer of a
# few GB that stays cached while the code changes.
RUN pip install torch==2.14.1 torchvision==0.29.1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY lsq lsq
COPY api api
COPY worker worker
COPY migrations migrations
# Not editable: the code goes into the venv, and /src stays behind in this stage.
RUN pip install .

# --- runtime: the venv on a slim base; no sources, not root ----------------------------------
FROM python:3.11-slim-bookworm
# g++: torch.compile generates C++ (CPU) and builds Triton's launchers (CUDA) at run time;
# without it, training.compile falls back to eager, about 1.3x slower for W/A quantized jobs.
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*
# Files on the artifacts volume belong to this uid: match it to the owner of an NFS export.
ARG LSQ_UID=1000
# The folders exist, owned by lsq, before a volume is mounted there: Docker copies that
# ownership into a new named volume, so the non-root processes can write to it.
# /data is the datasets mount; Fashion-MNIST's default root /usr/share/datasets leads there too.
RUN useradd --create-home --uid "$LSQ_UID" --user-group lsq \
 && mkdir -p /var/lib/lsq/artifacts /data /home/lsq/.cache/torch \
 && chown -R lsq:lsq /var/lib/lsq /home/lsq/.cache \
 && ln -s /data /usr/share/datasets
COPY --from=builder /opt/lsq /opt/lsq
ENV PATH=/opt/lsq/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    LSQ_DATA_DIR=/var/lib/lsq
WORKDIR /home/lsq
EXPOSE 8000
# No HEALTHCHECK: the worker serves no HTTP; compose checks the API's /readyz. Compose runs
# `lsq api` and `lsq worker`; a bare `docker run -p 8000:8000` gets the API and one worker on
# embedded SQLite under LSQ_DATA_DIR.
CMD ["lsq", "serve", "--host", "0.0.0.0", "--port", "8000"]
USER lsq
