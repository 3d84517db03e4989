# One image for the five services; the container's command names which one runs:
#   docker run paymesh order_svc        (python -m order_svc)
#   docker run paymesh paymesh.ops.healthcheck 127.0.0.1:50051
# docker-compose.yml builds it once and runs two replicas of each service from it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system --gid 10001 paymesh \
 && useradd --system --uid 10001 --gid paymesh --create-home --home-dir /home/paymesh paymesh

# The runtime dependencies only (no `[test]` extras); the source tree is dropped after install.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY paymesh ./paymesh
COPY order_svc ./order_svc
COPY inventory_svc ./inventory_svc
COPY payment_svc ./payment_svc
COPY gateway_mock ./gateway_mock
COPY webhook_svc ./webhook_svc
RUN pip install . && rm -rf /src

USER paymesh
WORKDIR /home/paymesh
# Nothing is written here when the stores are on PostgreSQL, as in docker-compose.yml, but the TLS files
# (its `tls` volume, mounted here, takes this directory's owner: the service user).
ENV PAYMESH_DATA_DIR=/home/paymesh/data
RUN mkdir -p /home/paymesh/data/tls

# Health: `python -m paymesh.ops.healthcheck ADDR` (exit 0 when SERVING); each service's port is
# its own, so docker-compose.yml sets the check per service.
EXPOSE 50051 50052 50053 50054 50055
ENTRYPOINT ["python", "-m"]
CMD ["order_svc"]
