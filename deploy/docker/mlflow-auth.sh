#!/usr/bin/env bash
# Entry point of the mlflow service (docker-compose.yaml): writes the settings of MLflow's
# basic-auth app from the environment, then runs the server command given as arguments.
# Users and permissions live in the MLflow database (MLFLOW_AUTH_DATABASE_URI; the auth
# tables have their own migration history). The bootstrap admin's password comes from
# MLFLOW_AUTH_ADMIN_PASSWORD, read by MLflow itself on the first start.
set -euo pipefail
: "${MLFLOW_AUTH_DATABASE_URI:?set MLFLOW_AUTH_DATABASE_URI}"
: "${MLFLOW_AUTH_CONFIG_PATH:?set MLFLOW_AUTH_CONFIG_PATH}"
umask 077  # the file holds the database password
mkdir -p "$(dirname "$MLFLOW_AUTH_CONFIG_PATH")"
cat >"$MLFLOW_AUTH_CONFIG_PATH" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI}
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
exec "$@"
