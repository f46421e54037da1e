# The image of the web and worker processes (docker-compose.yml builds it; Heroku uses the Procfile instead).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=8000

WORKDIR /app

# Dependencies first, in a layer of their own: a change to our code does not reinstall them. Empty packages
# stand in for ours so that pip can read the project; the real code is installed below.
COPY pyproject.toml README.md ./
RUN mkdir dramatiq_kafka_broker pipeline web \
    && touch dramatiq_kafka_broker/__init__.py pipeline/__init__.py web/__init__.py \
    && pip install . \
    && pip uninstall -y batch-user-processing \
    && rm -rf dramatiq_kafka_broker pipeline web build ./*.egg-info

COPY dramatiq_kafka_broker ./dramatiq_kafka_broker
COPY pipeline ./pipeline
COPY web ./web
RUN pip install --no-deps . && rm -rf build ./*.egg-info

# Never run as root; the code needs no write access to /app.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin app
USER app

EXPOSE 8000
# The Procfile's web line; docker-compose.yml gives the worker and migrate services their own command.
CMD ["sh", "-c", "exec uvicorn web.app:app --host 0.0.0.0 --port \"$PORT\" --workers \"${WEB_CONCURRENCY:-1}\" --proxy-headers --forwarded-allow-ips='*'"]
