"""Settings for the Catga project.

Every value that differs between a laptop, CI and production comes from the
environment, read here and nowhere else. A production process (DJANGO_DEBUG off)
without DJANGO_SECRET_KEY refuses to start instead of running with a known key.
"""

import os
import sys
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from catga_site import config

BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("CATGA_DATA_DIR", BASE_DIR / "data"))

# pytest-django and `manage.py test` load settings before any test code can set
# the environment, so the test runner is recognised here rather than configured.
TESTING = "pytest" in sys.modules or sys.argv[1:2] == ["test"]

env_bool = config.env_bool


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DJANGO_DEBUG", False)

# The optional JSON file mounted from a ConfigMap (see catga_site/config.py); the
# environment wins over it. A bad file stops start-up here, naming the key.
CONFIG_FILE = config.load(os.environ.get("CATGA_CONFIG_FILE", ""))

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "")
if not SECRET_KEY:
    if not (DEBUG or TESTING):
        raise ImproperlyConfigured(
            "DJANGO_SECRET_KEY is not set. Set it (from a Secret in Kubernetes), "
            "or set DJANGO_DEBUG=1 for local development."
        )
    SECRET_KEY = "insecure-dev-only-key-never-used-in-production"  # noqa: S105 (DEBUG/tests only)

ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG or TESTING else "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "apps.mediator",
    "apps.mediator.observability",
    "health_check",
    "django_prometheus",
    "apps.inventory",
    "apps.payments",
    "apps.orders",
]

MIDDLEWARE = [
    # Answers /health/live and /health/ready first: kubelet probes carry the pod IP as Host
    # and must not depend on ALLOWED_HOSTS, HTTPS redirects or sessions.
    "catga_site.health.ProbeMiddleware",
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "apps.mediator.api.safety.RefuseNulMiddleware",
    # Serves the collected static files (the admin's CSS/JS) from gunicorn, no extra web server.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

# Production hardening (`manage.py check --deploy` is clean with the prod overlay's env).
# TLS ends at the ingress, which says so in X-Forwarded-Proto; probes and scrapes come
# over plain HTTP from inside the cluster and are not redirected.
if not (DEBUG or TESTING):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env_bool("DJANGO_SECURE_SSL_REDIRECT", True)
    SECURE_REDIRECT_EXEMPT = [r"^health/", r"^metrics$"]
    SECURE_HSTS_SECONDS = int(os.environ.get("DJANGO_HSTS_SECONDS", "31536000"))
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("DJANGO_HSTS_PRELOAD", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", "")
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

ROOT_URLCONF = "catga_site.urls"
WSGI_APPLICATION = "catga_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "catga_site" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATA_DIR.mkdir(parents=True, exist_ok=True)
# PostgreSQL only. Without DATABASE_URL: the embedded server `manage.py up` starts in
# DATA_DIR/postgres (the test plugin sets DATABASE_URL to its own).
DATABASES = {
    "default": config.database(
        os.environ.get("DATABASE_URL"),
        embedded=DATA_DIR / "postgres",
        conn_max_age=int(os.environ.get("DATABASE_CONN_MAX_AGE", "60")),
    )
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("DJANGO_STATIC_ROOT", BASE_DIR / "staticfiles"))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG or TESTING
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticatedOrReadOnly"],
    "DEFAULT_PARSER_CLASSES": [
        "apps.mediator.api.safety.SafeJSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "EXCEPTION_HANDLER": "apps.mediator.api.errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "apps.mediator.api.schema.Pagination",
    "PAGE_SIZE": 100,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Catga for Django",
    "DESCRIPTION": "Orders, inventory and payments over a CQRS mediator and NATS JetStream.",
    "VERSION": "1.0.0",
    # Swagger UI served from our own static files: the docs work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
}

# Request bodies larger than this are refused with a 400 before any parsing.
DATA_UPLOAD_MAX_MEMORY_SIZE = int(os.environ.get("DJANGO_MAX_BODY_BYTES", str(1024 * 1024)))

# The mediator's settings: only overrides, from the environment (CATGA_<KEY>, NATS_*, OTEL_*) and
# the file; every key and its default is declared once, in apps/mediator/core/conf.py.
CATGA = config.catga_overrides(CONFIG_FILE, sys.argv, testing=TESTING)
# The web runs orders' commands in-process (POST /api/orders/ places the order there): its NATS
# user publishes what the orders user does, and nothing of payments' or inventory's.
CATGA.setdefault("WEB_CONTEXTS", ["orders"])

# Extra apps, comma separated (the benchmarks' no-op context: CATGA_EXTRA_APPS=bench.noop_app).
# An app with contracts.py and handlers.py is a bounded context (found by the mediator).
INSTALLED_APPS += env_list("CATGA_EXTRA_APPS", "")

# Seconds each step of the order saga may take before it compensates and cancels.
ORDER_STEP_TIMEOUT = float(os.environ.get("ORDER_STEP_TIMEOUT", "60"))

# JSON lines with message, correlation and trace ids when LOG_FORMAT=json (Kubernetes),
# plain text otherwise; levels from LOG_LEVEL or the file's Logging.LogLevel.
LOGGING = config.logging_settings(CONFIG_FILE)
