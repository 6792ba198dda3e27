# syntax=docker/dockerfile:1
# AetherGate production image: gunicorn with uvicorn workers, non-root.
#
# BASE: any Debian-family image with Python 3.11+ and its venv module (the
# official slim image by default; CI builds from a debootstrapped Debian).
# PYTHON: that image's interpreter.
# A private CA for pip and npm (a TLS-inspecting proxy, a private index) is passed as a
# build secret, used by the install steps and never stored in a layer:
#   docker build --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt .
ARG BASE=python:3.11-slim

# The admin's assets from npm (Chart.js, for the usage dashboard), as package-lock.json
# pins them; only their dist/ reaches the image, which carries no Node.js.
FROM ${BASE} AS assets
WORKDIR /assets
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends npm >/dev/null \
 && rm -rf /var/lib/apt/lists/*
COPY package.json package-lock.json ./
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export NPM_CONFIG_CAFILE=/run/secrets/pip-ca; fi \
 && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error

FROM ${BASE}
ARG PYTHON=python3

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AETHERGATE_ENV_FILE= \
    VIRTUAL_ENV=/opt/aethergate \
    PATH=/opt/aethergate/bin:$PATH

WORKDIR /app
RUN useradd --uid 10001 --home-dir /app --no-create-home --shell /usr/sbin/nologin aethergate \
 && ${PYTHON} -c 'import sys; sys.exit(sys.version_info < (3, 11) and "AetherGate needs Python 3.11+")' \
 && ${PYTHON} -m venv ${VIRTUAL_ENV}

COPY requirements.txt .
RUN --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && pip install -r requirements.txt

COPY . .
COPY --from=assets /assets/node_modules/chart.js/dist node_modules/chart.js/dist
# collectstatic only reads files; the key exists for this build step alone.
RUN SECRET_KEY=build-time-only-key-for-collectstatic-not-used-at-runtime \
    python manage.py collectstatic --noinput --verbosity 0 \
 && mkdir -p /app/data && chown aethergate /app/data

USER aethergate
EXPOSE 8000
CMD ["gunicorn", "--config", "gunicorn.conf.py", "aethergate.asgi:application"]
