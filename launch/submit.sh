#!/usr/bin/env bash
# Submit a training run to a running Ray cluster as a Ray job, with Ray's own CLI.
# `dist-contrast submit` does the same through Ray's job API, with the config validated
# first and the job's outcome as its exit status (README, From laptop to cluster).
#   RAY_ADDRESS=http://<head>:8265 launch/submit.sh configs/synthetic.yaml trainer.num_workers=8
# Ray 2.5x+ clusters use token authentication: set RAY_AUTH_TOKEN or keep ~/.ray/auth_token.
# MLFLOW_TRACKING_URI should name a store that every node reaches (an MLflow server).
set -euo pipefail
if [ -z "${RAY_ADDRESS:-}" ]; then
  echo "submit.sh: set RAY_ADDRESS to the cluster's job server, e.g. http://head:8265" >&2
  exit 2
fi
if [ $# -lt 1 ]; then
  echo "submit.sh: usage: launch/submit.sh CONFIG [key=value ...]" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
env_json="{\"env_vars\": {\"MLFLOW_TRACKING_URI\": \"${MLFLOW_TRACKING_URI:-}\"}}"
exec ray job submit --working-dir . --runtime-env-json "$env_json" -- dist-contrast train "$@"
