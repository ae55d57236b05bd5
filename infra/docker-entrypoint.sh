#!/bin/sh
# Entry point of the project image: point DVC at the S3 remote given in the environment, then run the
# command (by default a Prefect worker). The remote goes to .dvc/config.local, never to the committed
# .dvc/config, so runs without a remote keep working.
set -eu
cd "${METAREC_PROJECT_DIR:-/opt/metarec}"
if [ -n "${DVC_REMOTE_URL:-}" ]; then
    dvc remote add -q --local --force --default storage "$DVC_REMOTE_URL"
    if [ -n "${DVC_S3_ENDPOINT_URL:-}" ]; then
        dvc remote modify -q --local storage endpointurl "$DVC_S3_ENDPOINT_URL"
    fi
fi
exec "$@"
