# Image of the example app for docker-compose.yml (no secrets: they come from the environment).
FROM python:3.11.9-slim-bookworm
WORKDIR /app
COPY pyproject.toml README.md ./
COPY celery_master ./celery_master
COPY examples ./examples
RUN pip install --no-cache-dir ".[postgres,redis]" flower==2.2.0
USER nobody
