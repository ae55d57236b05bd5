#!/bin/sh
# Runs once, when the postgres container initialises an empty volume: POSTGRES_DB (the MLflow store)
# exists already; create the Prefect server's database beside it.
set -eu
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -c "CREATE DATABASE \"${PREFECT_DB:-prefect}\" OWNER \"$POSTGRES_USER\""
