# The suite in a container: the pinned requirements, Fashion-MNIST from Debian, `make reproduce`.
#   CPU:  docker build -t sharpness .
#         mkdir -p results && docker run --rm --user "$(id -u):$(id -g)" \
#           -v "$PWD/results:/app/results" sharpness
#   GPU:  docker build --build-arg TORCH_VARIANT=cu126 -t sharpness-gpu .
#         docker run --rm --gpus all --user "$(id -u):$(id -g)" \
#           -v "$PWD/results:/app/results" sharpness-gpu make reproduce PROFILE=paper
# Results, figures and REPORT.md all land in the mounted results/ (ENV below).
FROM python:3.11-slim-bookworm

# Debian bookworm's versions (the base image's release): make runs the reproduction,
# g++ is torch.compile's C++ compiler on CPU, dataset-fashion-mnist puts Fashion-MNIST under
# /usr/share/datasets/fashion-mnist where deep_nets.data looks first.
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        make=4.3-4.1 \
        g++=4:12.2.0-3 \
        dataset-fashion-mnist=0.0~git20200523.55506a9-1 \
    && rm -rf /var/lib/apt/lists/*

# A non-root user (uid 1000) owns the checkout and the virtualenv.
RUN useradd --create-home --uid 1000 sam \
    && mkdir /app \
    && chown sam:sam /app
USER 1000:1000
WORKDIR /app

# cpu, or a CUDA build of the same torch version (cu126, ...; see pytorch.org/get-started).
ARG TORCH_VARIANT=cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MPLCONFIGDIR=/tmp/matplotlib \
    FIGURES=results/figures \
    REPORT=results/REPORT.md

# Dependencies first (a layer that survives source edits): torch at requirements.txt's pin from
# PyTorch's index for TORCH_VARIANT, then exactly requirements.txt (the installed torch satisfies
# its pin, so pip keeps it).
COPY --chown=1000:1000 requirements.txt pyproject.toml Makefile ./
RUN python3 -m venv .venv \
    && .venv/bin/pip install -qq --no-cache-dir \
        --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}" \
        "torch==$(sed -n 's/^torch==//p' requirements.txt)" \
    && .venv/bin/pip install -qq --no-cache-dir -r requirements.txt

# The suite itself, installed by the Makefile's own set-up target (editable, no dependencies).
COPY --chown=1000:1000 . .
RUN make .venv/.installed

CMD ["make", "reproduce"]
