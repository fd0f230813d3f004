# syntax=docker/dockerfile:1
# eventrouter image: small, non-root, works with a read-only root filesystem.
#
#   docker build -t eventrouter .                        # every sink (EXTRAS=all)
#   docker build --build-arg EXTRAS=kafka -t eventrouter:kafka .
#   docker run --rm -i --read-only --tmpfs /tmp eventrouter --source=file:- --sink=log < events.jsonl
#   buildah bud --isolation chroot -t eventrouter .      # no daemon needed
#
# Stage 1 builds wheels for eventrouter and all its dependencies once, at the versions the test
# suite was run with (constraints.txt); stage 2 installs them offline (--no-index) from a bind
# mount, so neither pip caches nor wheels end up in a layer.
# PYTHON_IMAGE may be any Debian-like image with python (3.11+) and pip on PATH and useradd:
# tests/test_dockerfile.py builds this file with buildah on a debootstrapped Debian bookworm and
# runs the image (uid 10001, read-only root) on the recorded real events.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
ARG EXTRAS=all
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md constraints.txt ./
COPY eventrouter ./eventrouter
COPY sinks ./sinks
RUN pip wheel --constraint constraints.txt --wheel-dir /wheels ".[${EXTRAS}]"

FROM ${PYTHON_IMAGE}
ARG EXTRAS=all
LABEL org.opencontainers.image.title="eventrouter" \
      org.opencontainers.image.description="Route Kubernetes Events to chat, webhooks and data stores (kube-eventer compatible)" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
# One RUN, one layer. A fixed numeric uid lets Kubernetes check runAsNonRoot without a passwd
# lookup. /kube-eventer: kube-eventer's manifests say command: ["/kube-eventer", ...], and they
# work unchanged with this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels "eventrouter[${EXTRAS}]" \
 && ln -s "$(command -v eventrouter)" /kube-eventer \
 && groupadd --system --gid 10001 eventrouter \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
      --home-dir /var/lib/eventrouter --shell /usr/sbin/nologin eventrouter \
 && install -d -o 10001 -g 10001 -m 0750 /var/lib/eventrouter
# Everything the process writes lives under /var/lib/eventrouter (the working directory, so the
# default --data-dir: durable sink buffers and sink state; a file checkpoint; sink spools)
# or /tmp: mount both writable (emptyDir, --tmpfs) and the root filesystem can be read-only.
# No .pyc files are written at run time; logs go to stderr as JSON.
ENV HOME=/var/lib/eventrouter \
    TMPDIR=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EVENTROUTER_LOG_FORMAT=json
WORKDIR /var/lib/eventrouter
VOLUME ["/var/lib/eventrouter"]
USER 10001:10001
# /healthz, /readyz and /metrics (kube-eventer's --healthz-port)
EXPOSE 8084
ENTRYPOINT ["eventrouter"]
CMD ["--source=kubernetes:https://kubernetes.default", "--sink=log"]
