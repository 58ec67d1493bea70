# syntax=docker/dockerfile:1
#
# One image for every role: the web server (gunicorn), the consumers
# (`python manage.py run_consumer --context ...`) and the migration Job
# (`python manage.py migrate`). Kubernetes picks the role with command/args.
#
#   docker build -t catga:dev .
#
# Both stages use the same base, a version tag (not a digest: nothing in this repository's
# CI can resolve one); the CD workflow records the digest of the image it pushes.

# --- build: a virtualenv with the pinned runtime requirements ----------------
FROM python:3.11-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# Only the runtime set: test and lint tools (requirements/dev.txt) stay out.
COPY requirements/base.txt requirements/observability.txt /tmp/requirements/
RUN pip install --no-cache-dir -r /tmp/requirements/base.txt

# --- runtime: the venv, the code, collected static files, a fixed non-root UID
FROM python:3.11-slim-bookworm AS runtime
# Fixed UID/GID: the Kubernetes securityContext (runAsUser/runAsGroup/fsGroup)
# names the same numbers, so file ownership on volumes is predictable.
ARG APP_UID=10001
RUN groupadd --system --gid "${APP_UID}" catga \
    && useradd --system --no-log-init --uid "${APP_UID}" --gid catga \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin catga
# The root filesystem is read-only in Kubernetes: HOME, the data dir (settings
# create it on import) and gunicorn's control socket live under /tmp, an emptyDir.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DJANGO_SETTINGS_MODULE=catga_site.settings \
    CATGA_DATA_DIR=/tmp/catga \
    HOME=/tmp
WORKDIR /app
COPY --from=build /opt/venv /opt/venv
# Code stays owned by root: the app user can read it, never change it.
COPY . .
# Static files are collected at build time. settings refuse to start without a
# secret key when DEBUG is off, so this one RUN gets a throwaway key in its own
# environment; it is not an ENV, so it is not in the image's configuration.
# The real key only ever comes from the Secret at run time.
RUN DJANGO_SECRET_KEY=collectstatic-only-not-a-secret \
    python manage.py collectstatic --noinput --verbosity 0 \
    && python -m compileall -q /app/apps /app/catga_site \
    && rm -rf /tmp/catga
USER ${APP_UID}:${APP_UID}
EXPOSE 8000 8001
CMD ["gunicorn", "-c", "catga_site/gunicorn.conf.py", "catga_site.wsgi:application"]
