# connref in a container, for pipelines that run steps in images:
#   docker build -t connref .
#   docker run --rm -v "$PWD:/work" connref plan
# The working directory /work is where the config is mounted; connref runs as an unprivileged user.

FROM python:3.12-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY reconciler ./reconciler
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.12-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir /wheels/*.whl \
    && rm -rf /wheels \
    && groupadd --gid 10001 connref \
    && useradd --uid 10001 --gid 10001 --create-home --shell /usr/sbin/nologin connref
USER 10001:10001
WORKDIR /work
ENTRYPOINT ["connref"]
CMD ["--help"]
