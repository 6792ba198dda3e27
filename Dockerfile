# AetherGate production image: gunicorn with uvicorn workers, non-root.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AETHERGATE_ENV_FILE=

WORKDIR /app
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin aethergate

COPY requirements.txt .
RUN pip install -r requirements.txt

COPY . .
# collectstatic only reads files; the key exists for this build step alone.
RUN SECRET_KEY=build-time-only-key-for-collectstatic-not-used-at-runtime \
    python manage.py collectstatic --noinput --verbosity 0 \
 && mkdir -p /app/data && chown aethergate /app/data

USER aethergate
EXPOSE 8000
CMD ["gunicorn", "--config", "gunicorn.conf.py", "aethergate.asgi:application"]
