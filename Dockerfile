# Ponte's one image: `ponte ingest`, `ponte transform`, `ponte deliver`, `ponte migrate`
# and `ponte topics` are the same image with a different argument (deploy/k8s, docs/deploy.md).
#
#   docker build -t ponte:0.1.0 .
#   docker run --rm -e PONTE_DATABASE_URL=... -e PONTE_KAFKA_BOOTSTRAP=... ponte:0.1.0 ingest
#
# The runtime dependencies are installed in a layer of their own, from pyproject.toml alone,
# so editing the source rebuilds only the last layers. The `embedded` extra (the local
# broker for `ponte dev` and the tests) is not installed: production talks to real Kafka.

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    PONTE_HTTP_HOST=0.0.0.0 \
    PONTE_HTTP_PORT=8000

# The user the pods run as (deploy/k8s: runAsUser/runAsGroup 10001, runAsNonRoot).
RUN groupadd --system --gid 10001 ponte \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/ponte --create-home \
       --shell /usr/sbin/nologin ponte

WORKDIR /src

# 1. Dependencies only: [project].dependencies read from pyproject.toml (tomllib is in 3.11),
#    at the versions of requirements.lock, the ones `make audit` checks.
COPY pyproject.toml README.md requirements.lock ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install -c requirements.lock --upgrade pip setuptools \
    && pip install -c requirements.lock -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 2. Ponte itself (a regular, non-editable install: migrations and mapping files ship
#    inside the package), then the sources are removed from the image.
COPY shared ./shared
COPY services ./services
RUN pip install --no-deps . \
    && cd / && rm -rf /src

WORKDIR /home/ponte
USER 10001:10001
EXPOSE 8000

ENTRYPOINT ["ponte"]
CMD ["--help"]
