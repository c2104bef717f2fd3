# syntax=docker/dockerfile:1
# The images of the Kubernetes deployment (k8s/). From the repository root:
#   docker build -t dist-contrast:0.1.0 .                                      Ray + this package, CPU
#   docker build -t dist-contrast:0.1.0-gpu --build-arg VARIANT=gpu .          Ray's GPU image, CUDA
#                                                                              torch, the gpu extra
#   docker build -t dist-contrast-mlflow:0.1.0 --target mlflow .               the MLflow server
# RAY_VERSION is the Ray this project pins; the Ray containers of k8s/ say the same (rayVersion).
ARG RAY_VERSION=2.60.0
ARG VARIANT=cpu
# checkov:skip=CKV_DOCKER_2:these images run on Kubernetes, which ignores Docker's HEALTHCHECK; k8s/mlflow.yaml probes the MLflow server and KubeRay probes the Ray containers

# ---------------------------------------------------------------------------- MLflow server
FROM python:3.11.14-slim-bookworm AS mlflow
# mlflow[auth]: the basic-auth app; psycopg2: the PostgreSQL backend store; boto3: S3 artifacts.
RUN python -m pip install --no-cache-dir \
        "mlflow[auth]==3.18.0" "psycopg2-binary==2.9.13" "boto3==1.44.8" \
    && useradd --uid 10001 --user-group --no-create-home --home-dir /tmp mlflow
USER 10001
EXPOSE 5000
ENTRYPOINT ["mlflow"]
CMD ["server", "--host", "0.0.0.0", "--port", "5000"]

# ---------------------------------------------------------------------------- Ray + dist_contrast
# The official Ray image of the pinned version (Python 3.11; user ray, uid 1000).
FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT} AS ray
ARG VARIANT
WORKDIR /home/ray/dist-contrast
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 dist_contrast ./dist_contrast
COPY --chown=1000:100 configs ./configs
# The CPU variant takes torch's CPU build (the default wheel pulls several GB of CUDA
# libraries); the GPU variant takes the default CUDA build and the gpu extra (FAISS on GPU,
# GPU system metrics).
RUN if [ "$VARIANT" = "gpu" ]; then \
        python -m pip install --no-cache-dir "torch==2.13.0" \
        && python -m pip install --no-cache-dir ".[gpu]"; \
    else \
        python -m pip install --no-cache-dir "torch==2.13.0" \
            --index-url https://download.pytorch.org/whl/cpu \
        && python -m pip install --no-cache-dir .; \
    fi \
    && dist-contrast --version
USER 1000
WORKDIR /home/ray
