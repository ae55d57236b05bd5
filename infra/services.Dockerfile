# The MLflow tracking server and the Prefect server at the versions the project's clients use
# (constraints.txt), with the PostgreSQL and S3 drivers they need; no CUDA, no project code.
# Build from the repository root: docker build -f infra/services.Dockerfile -t metarec-services .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    PREFECT_SERVER_ANALYTICS_ENABLED=false

COPY constraints.txt /tmp/constraints.txt
RUN pip install -c /tmp/constraints.txt mlflow prefect asyncpg "psycopg2-binary>=2.9" boto3 \
 && rm /tmp/constraints.txt \
 && useradd --create-home --uid 10001 app

USER app
WORKDIR /home/app
