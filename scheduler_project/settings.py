"""Django settings, read from the environment (django-environ).

Three modes, chosen by SCHEDULER_ENVIRONMENT: ``development`` (the default; what `make up` runs),
``test`` (what `make test` runs) and ``production`` (refuses to start with DEBUG on or a weak SECRET_KEY).
Every project knob has the SCHEDULER_ prefix and is read here, once, with its documented default.
"""

from __future__ import annotations

import os
import tempfile
from datetime import timedelta
from pathlib import Path

import environ
from kombu import Queue

from scheduler_project.knobs import Knobs

BASE_DIR = Path(__file__).resolve().parent.parent

env = environ.Env()
# var/env is written by `make up` (embedded servers, the dev secret key); the real environment wins.
SCHEDULER_VAR_DIR = BASE_DIR / env.str("SCHEDULER_VAR_DIR", default="var")
_VAR_ENV = SCHEDULER_VAR_DIR / "env"
if _VAR_ENV.exists() and env.str("SCHEDULER_READ_VAR_ENV", default="1") == "1":
    environ.Env.read_env(str(_VAR_ENV), overwrite=False)
# Every SCHEDULER_* knob below is typed and range-checked; the wrong ones stop the process at the end of
# this module with one line each (scheduler_project/knobs.py).
knob = Knobs()

ENVIRONMENT = knob.str("SCHEDULER_ENVIRONMENT", "development", choices={"development", "test", "production"})
PRODUCTION = ENVIRONMENT == "production"

DEBUG = env.bool("DEBUG", default=not PRODUCTION)
_DEV_SECRET = "django-insecure-dev-only-key-never-use-in-production-0123456789abcdef"  # noqa: S105
SECRET_KEY = env.str("SECRET_KEY", default="" if PRODUCTION else _DEV_SECRET)

if PRODUCTION:
    if DEBUG:
        knob.errors.append("DEBUG must be off when SCHEDULER_ENVIRONMENT=production")
    if len(SECRET_KEY) < 50 or SECRET_KEY.startswith("django-insecure") or len(set(SECRET_KEY)) < 5:
        knob.errors.append(
            "SECRET_KEY must be set to a random value of at least 50 characters in production "
            "(python -c 'import secrets; print(secrets.token_urlsafe(50))')"
        )

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[] if PRODUCTION else ["*"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "knox",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "accounts",
    "nodes",
    "jobs",
    "worker",
    "monitoring",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "scheduler_project.csp.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Inside the security headers, outside everything that may query the database (the session first).
    "scheduler_project.dbguard.DatabaseUnavailableMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
# Django's database sessions; a save cut off by the database going away is a 503, not "session deleted".
SESSION_ENGINE = "scheduler_project.sessions"

ROOT_URLCONF = "scheduler_project.urls"
WSGI_APPLICATION = "scheduler_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
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

DATABASES = {
    "default": env.db_url("DATABASE_URL", default="postgres://postgres@127.0.0.1:5432/scheduler"),
}
DATABASES["default"]["CONN_MAX_AGE"] = knob.int("SCHEDULER_DB_CONN_MAX_AGE", 60, low=0, high=86400)
DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
# --- Scale-out: a transaction-mode pooler and a read replica (docs/operations.md) -------------------
# "pgbouncer": DATABASE_URL (and DATABASE_REPLICA_URL) go through PgBouncer in transaction mode, where a
# connection's session state does not outlive a transaction: no server-side cursors (.iterator()), and
# no prepared statements unless SCHEDULER_DB_PREPARE=1 says the pooler keeps them (PgBouncer 1.21+ with
# max_prepared_statements).
SCHEDULER_DB_POOLER = knob.str("SCHEDULER_DB_POOLER", "", choices={"", "pgbouncer"})
# With DATABASE_REPLICA_URL (a streaming standby of DATABASE_URL) the read-only views read from it while
# its replay lag is under SCHEDULER_REPLICA_MAX_LAG_SECONDS, checked at most every
# SCHEDULER_REPLICA_CHECK_SECONDS; all else, and every read while it is down or behind, uses the primary
# (scheduler_project/dbrouter.py).
SCHEDULER_REPLICA_MAX_LAG_SECONDS = knob.float("SCHEDULER_REPLICA_MAX_LAG_SECONDS", 10.0, low=0, high=86400)
SCHEDULER_REPLICA_CHECK_SECONDS = knob.float("SCHEDULER_REPLICA_CHECK_SECONDS", 5.0, low=0.1, high=3600)
if env.str("DATABASE_REPLICA_URL", default=""):
    _replica = env.db_url("DATABASE_REPLICA_URL")
    _replica.update(
        CONN_MAX_AGE=DATABASES["default"]["CONN_MAX_AGE"],
        CONN_HEALTH_CHECKS=True,
        # A replica that does not answer costs a view 3 s once, not a hang (the URL's own options win).
        OPTIONS={
            **DATABASES["default"].get("OPTIONS", {}),
            "connect_timeout": 3,
            **_replica.get("OPTIONS", {}),
        },
        TEST={"MIRROR": "default"},  # tests read the test database through it unless they set one up
    )
    if not _replica["ENGINE"].endswith("postgresql"):
        knob.errors.append("DATABASE_REPLICA_URL must point at PostgreSQL (postgres://...)")
    DATABASES["replica"] = _replica
    DATABASE_ROUTERS = ["scheduler_project.dbrouter.ReplicaRouter"]
for _database in DATABASES.values():
    _database["DISABLE_SERVER_SIDE_CURSORS"] = SCHEDULER_DB_POOLER == "pgbouncer"
# --- end of scale-out block ---------------------------------------------------------------------
# While the database is away requests answer 503 with this Retry-After (scheduler_project/dbguard.py).
SCHEDULER_DB_RETRY_AFTER_SECONDS = knob.int("SCHEDULER_DB_RETRY_AFTER_SECONDS", 2, low=1, high=3600)
# The hot statements (claim, finish, placement) run as prepared statements (scheduler_project/db.py).
SCHEDULER_DB_PREPARE = knob.bool("SCHEDULER_DB_PREPARE", not SCHEDULER_DB_POOLER)
# A claim commits without waiting for the WAL flush (jobs/services/executions.py says why that is safe).
SCHEDULER_DB_ASYNC_CLAIM = knob.bool("SCHEDULER_DB_ASYNC_CLAIM", True)
if not DATABASES["default"]["ENGINE"].endswith("postgresql"):
    knob.errors.append("DATABASE_URL must point at PostgreSQL (postgres://...)")
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_USER_MODEL = "accounts.User"
PASSWORD_HASHERS = [
    "django.contrib.auth.hashers.Argon2PasswordHasher",
    "django.contrib.auth.hashers.PBKDF2PasswordHasher",
]
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
STATIC_ROOT = BASE_DIR / "var" / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    # The manifest exists only after collectstatic (the Docker image runs it); elsewhere serve plain names.
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if PRODUCTION
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Without collectstatic (development and tests), serve straight from the apps' static folders.
WHITENOISE_USE_FINDERS = not PRODUCTION
WHITENOISE_AUTOREFRESH = not PRODUCTION
LOGIN_URL = "/admin/login/"

# --- Broker (Redis or RabbitMQ) and Redis (locks, cache, login throttle) ----------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="redis://127.0.0.1:6379/0")
# RabbitMQ (amqp://, amqps://) is the scale-out broker; Redis (redis://, rediss://) the simple one.
BROKER_IS_AMQP = CELERY_BROKER_URL.split("://", 1)[0] in {"amqp", "amqps", "pyamqp"}
if ENVIRONMENT == "test":
    # Tests own one Redis database number (flushed before and after the run), never the app's; a test on
    # RabbitMQ brings its own vhost in the URL.
    from urllib.parse import urlsplit, urlunsplit

    _test_db = knob.int("SCHEDULER_TEST_REDIS_DB", 15, low=0, high=15)
    if not BROKER_IS_AMQP:
        CELERY_BROKER_URL = urlunsplit(urlsplit(CELERY_BROKER_URL)._replace(path=f"/{_test_db}"))
        # Celery reads the CELERY_BROKER_URL environment variable before this setting: make them agree,
        # or every test run (and the workers it starts) would share the broker's own database number.
        import os

        os.environ["CELERY_BROKER_URL"] = CELERY_BROKER_URL
REDIS_URL = env.str("SCHEDULER_REDIS_URL", default="" if BROKER_IS_AMQP else CELERY_BROKER_URL)
if ENVIRONMENT == "test" and REDIS_URL:
    REDIS_URL = urlunsplit(urlsplit(REDIS_URL)._replace(path=f"/{_test_db}"))
if not REDIS_URL:
    knob.errors.append(
        "SCHEDULER_REDIS_URL is not set: with a RabbitMQ broker (CELERY_BROKER_URL=amqp://...) the cache, "
        "locks and login throttle still need Redis (e.g. redis://127.0.0.1:6379/0)"
    )
# RabbitMQ only: classic queues carry job priorities (x-max-priority); quorum queues are replicated across
# the cluster's nodes but have no priorities (every job is then served in order).
SCHEDULER_RABBITMQ_QUEUE_TYPE = knob.str(
    "SCHEDULER_RABBITMQ_QUEUE_TYPE", "classic", choices={"classic", "quorum"}
)
# How every queue is declared, by publishers and workers alike (RabbitMQ refuses a redeclaration with other
# arguments): priorities (Redis ignores the argument), or quorum queues. Node queues: worker/bootstep.py.
SCHEDULER_QUEUE_ARGUMENTS: dict[str, object] = (
    {"x-queue-type": "quorum"}
    if BROKER_IS_AMQP and SCHEDULER_RABBITMQ_QUEUE_TYPE == "quorum"
    else {"x-max-priority": 10}
)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "scheduler",
    }
}

# --- The scheduler's own knobs (documented in README.md) -----------------------------------
SCHEDULER_MAX_TIMEOUT_SECONDS = knob.int("SCHEDULER_MAX_TIMEOUT_SECONDS", 24 * 3600, low=1, high=2592000)
SCHEDULER_DEFAULT_TIMEOUT_SECONDS = knob.int("SCHEDULER_DEFAULT_TIMEOUT_SECONDS", 3600, low=1, high=2592000)
SCHEDULER_OUTPUT_LIMIT_BYTES = knob.int("SCHEDULER_OUTPUT_LIMIT_BYTES", 64 * 1024, low=1024, high=67108864)
SCHEDULER_HEARTBEAT_SECONDS = knob.float("SCHEDULER_HEARTBEAT_SECONDS", 5.0, low=0.1, high=3600)
SCHEDULER_NODE_OFFLINE_AFTER_SECONDS = knob.float(
    "SCHEDULER_NODE_OFFLINE_AFTER_SECONDS", 30.0, low=0.5, high=86400
)
# How long a worker keeps retrying to record a claim or an outcome while the database is away (then the run
# is left to its node's liveness check, which marks it lost once the database answers).
SCHEDULER_WORKER_DB_RETRY_SECONDS = knob.float("SCHEDULER_WORKER_DB_RETRY_SECONDS", 300.0, low=0, high=86400)
# Where a worker notes the process group of each shell run, so that what a lost run left is killed.
SCHEDULER_RUN_DIR = env.str(
    "SCHEDULER_RUN_DIR", default=str(Path(tempfile.gettempdir()) / f"scheduler-runs-{os.getuid()}")
)
SCHEDULER_NODE_CPU = knob.optional_float("SCHEDULER_NODE_CPU", low=0.001, high=9999.999)
SCHEDULER_NODE_MEMORY_MB = knob.optional_int("SCHEDULER_NODE_MEMORY_MB", low=1, high=2147483647)
SCHEDULER_NODE_LABELS = env.str("SCHEDULER_NODE_LABELS", default="")
SCHEDULER_SWEEP_SECONDS = knob.float("SCHEDULER_SWEEP_SECONDS", 2.0, low=0.1, high=3600)
# Period of the broker reconciler, and how long an execution stays queued before it is checked.
SCHEDULER_RECONCILE_SECONDS = knob.float("SCHEDULER_RECONCILE_SECONDS", 15.0, low=1, high=86400)
# How often the nodes' allocated counters are compared with their active allocations (and repaired).
SCHEDULER_COUNTER_REPAIR_SECONDS = knob.float("SCHEDULER_COUNTER_REPAIR_SECONDS", 60.0, low=1, high=86400)
# A placement considers this many random nodes of those that match (all of them when there are fewer; 0: all).
SCHEDULER_PLACEMENT_CANDIDATES = knob.int("SCHEDULER_PLACEMENT_CANDIDATES", 4, low=0, high=100000)
SCHEDULER_BEAT_LEASE_SECONDS = knob.float("SCHEDULER_BEAT_LEASE_SECONDS", 10.0, low=1, high=3600)
# --- Autoscaling (monitoring/selectors/autoscale.py, manage.py autoscale) --------------------------
# A job no registered node could ever hold is accepted and waits pending with the shortfall as its reason
# (an autoscaler hears of it through scheduler_desired_workers); on: refused with 400, as for a cluster
# that never grows.
SCHEDULER_REFUSE_UNPLACEABLE_JOBS = knob.bool("SCHEDULER_REFUSE_UNPLACEABLE_JOBS", False)
# Executions one worker runs at once (its `celery worker -c`), for the desired-workers count; unset: the
# count of executions is not a dimension (only cpu and memory are).
SCHEDULER_AUTOSCALE_WORKER_SLOTS = knob.optional_int("SCHEDULER_AUTOSCALE_WORKER_SLOTS", low=1, high=100000)
# Beat scheduler (jobs.beat): how often the leader looks for edited schedules, writes run bookkeeping
# in one batch, and re-checks the whole enabled set; the margin covers commits that land after date_changed.
SCHEDULER_BEAT_SYNC_SECONDS = knob.float("SCHEDULER_BEAT_SYNC_SECONDS", 1.0, low=0.1, high=3600)
SCHEDULER_BEAT_FLUSH_SECONDS = knob.float("SCHEDULER_BEAT_FLUSH_SECONDS", 2.0, low=0.1, high=3600)
SCHEDULER_BEAT_FULL_SYNC_SECONDS = knob.float("SCHEDULER_BEAT_FULL_SYNC_SECONDS", 300.0, low=1, high=86400)
SCHEDULER_BEAT_CHANGE_MARGIN_SECONDS = knob.float(
    "SCHEDULER_BEAT_CHANGE_MARGIN_SECONDS", 10.0, low=0, high=3600
)
SCHEDULER_HTTP_ALLOWLIST = env.list("SCHEDULER_HTTP_ALLOWLIST", default=[])
# Whether python jobs may name the demo handlers (jobs/executors/demo_handlers.py: `crash` kills its worker
# process, `progress` with no delay spins): on in development and test only.
SCHEDULER_DEMO_HANDLERS = knob.bool("SCHEDULER_DEMO_HANDLERS", not PRODUCTION)
# A slot that starts later than max(this, its interval) is a misfire: the job's misfire policy applies.
SCHEDULER_MISFIRE_GRACE_SECONDS = knob.float("SCHEDULER_MISFIRE_GRACE_SECONDS", 60.0, low=0, high=2592000)
SCHEDULER_ALLOW_SHELL_JOBS = knob.bool("SCHEDULER_ALLOW_SHELL_JOBS", True)
# The user shell jobs run as when the worker runs as root (empty: the worker's own user). Tests run their
# jobs as the worker's user, except those that check the isolation (they name the user).
SCHEDULER_SHELL_USER = env.str("SCHEDULER_SHELL_USER", default="" if ENVIRONMENT == "test" else "nobody")
# At most this many processes for the shell user (RLIMIT_NPROC; a fork bomb stops there; 0: no limit).
SCHEDULER_SHELL_MAX_PROCESSES = knob.int("SCHEDULER_SHELL_MAX_PROCESSES", 256, low=0, high=1000000)
# --- Container jobs (jobs/executors/container.py) and the shell sandbox -----------------------------
# A worker whose Docker Engine answers (DOCKER_HOST, else the default socket) labels its node
# runtime=docker; "off" never looks (container jobs then never land on its node).
SCHEDULER_CONTAINER_RUNTIME = knob.str("SCHEDULER_CONTAINER_RUNTIME", "auto", choices={"auto", "off"})
# The images container jobs may name: comma-separated shell-style patterns, e.g.
# "registry.example.com/*,busybox:*"; empty: any image (pull: if-missing pulls from the engine's registry).
SCHEDULER_CONTAINER_IMAGES = env.list("SCHEDULER_CONTAINER_IMAGES", default=[])
# At most this many processes (and threads) in one container (--pids-limit; 0: the engine's default).
SCHEDULER_CONTAINER_PIDS_LIMIT = knob.int("SCHEDULER_CONTAINER_PIDS_LIMIT", 256, low=0, high=1000000)
# How often a worker removes the containers of runs that are over (also at every start).
SCHEDULER_CONTAINER_JANITOR_SECONDS = knob.float(
    "SCHEDULER_CONTAINER_JANITOR_SECONDS", 60.0, low=1, high=86400
)
# "container": shell jobs run in a container of SCHEDULER_SHELL_SANDBOX_IMAGE with the job's cpu, memory
# and no network, on runtime=docker nodes only; "" (default): as a process of the worker's host.
SCHEDULER_SHELL_SANDBOX = knob.str("SCHEDULER_SHELL_SANDBOX", "", choices={"", "container"})
SCHEDULER_SHELL_SANDBOX_IMAGE = env.str("SCHEDULER_SHELL_SANDBOX_IMAGE", default="")
if SCHEDULER_SHELL_SANDBOX and not SCHEDULER_SHELL_SANDBOX_IMAGE:
    knob.errors.append(
        "SCHEDULER_SHELL_SANDBOX=container needs SCHEDULER_SHELL_SANDBOX_IMAGE (the image shell jobs run in)"
    )
SCHEDULER_FLOWER_URL = env.str("SCHEDULER_FLOWER_URL", default="http://127.0.0.1:5555/")
# --- Monitoring (monitoring app): output capture, retention, metrics, alerts ---------------------
# Captured output kept per execution (characters); past it the oldest chunks are dropped.
SCHEDULER_LOG_MAX_CHARS = knob.int("SCHEDULER_LOG_MAX_CHARS", 1_000_000, low=1000, high=1000000000)
# Finished executions (and their output) older than this are pruned daily; dead letters' are kept.
SCHEDULER_RETENTION_DAYS = knob.int("SCHEDULER_RETENTION_DAYS", 30, low=1, high=36500)
# Executions and output live in monthly partitions; beat creates this many months ahead of the current one.
SCHEDULER_HISTORY_MONTHS_AHEAD = knob.int("SCHEDULER_HISTORY_MONTHS_AHEAD", 2, low=1, high=24)
# /metrics needs `Authorization: Bearer <this>` or an operator's session; empty: session only.
SCHEDULER_METRICS_TOKEN = env.str("SCHEDULER_METRICS_TOKEN", default="")
# Metrics and dashboard summaries are cached (Redis) this long, so many viewers cost one query set.
SCHEDULER_METRICS_CACHE_SECONDS = knob.float("SCHEDULER_METRICS_CACHE_SECONDS", 5.0, low=0, high=3600)
# The duration and lateness histograms cover executions finished / fired in this trailing window.
SCHEDULER_METRICS_WINDOW_SECONDS = knob.int("SCHEDULER_METRICS_WINDOW_SECONDS", 3600, low=60, high=2592000)
SCHEDULER_ALERT_EVALUATE_SECONDS = knob.float("SCHEDULER_ALERT_EVALUATE_SECONDS", 5.0, low=0.5, high=86400)
SCHEDULER_ALERT_MAX_ATTEMPTS = knob.int("SCHEDULER_ALERT_MAX_ATTEMPTS", 6, low=1, high=100)
SCHEDULER_ALERT_BACKOFF_SECONDS = knob.float("SCHEDULER_ALERT_BACKOFF_SECONDS", 5.0, low=0.1, high=86400)
SCHEDULER_ALERT_BACKOFF_MAX_SECONDS = knob.float(
    "SCHEDULER_ALERT_BACKOFF_MAX_SECONDS", 600.0, low=0.1, high=2592000
)
SCHEDULER_WEBHOOK_TIMEOUT_SECONDS = knob.float("SCHEDULER_WEBHOOK_TIMEOUT_SECONDS", 5.0, low=0.5, high=300)
# Alert e-mail: EMAIL_URL (smtp://user:pass@host:587, consolemail://) and the sender address.
_EMAIL = env.email_url("EMAIL_URL", default="consolemail://")
EMAIL_BACKEND = _EMAIL["EMAIL_BACKEND"]
EMAIL_HOST = _EMAIL.get("EMAIL_HOST") or "localhost"
EMAIL_PORT = _EMAIL.get("EMAIL_PORT") or 25
EMAIL_HOST_USER = _EMAIL.get("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = _EMAIL.get("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = bool(_EMAIL.get("EMAIL_USE_TLS", False))
EMAIL_USE_SSL = bool(_EMAIL.get("EMAIL_USE_SSL", False))
DEFAULT_FROM_EMAIL = env.str("SCHEDULER_ALERT_EMAIL_FROM", default="scheduler@localhost")

# --- Celery (DESIGN.md "Reliability rules") ---------------------------------------------------
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_EVENT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True  # the Execution row is the record, never the result backend
CELERY_TASK_DEFAULT_QUEUE = "default"
# Shared queues; each worker also consumes its own node queue (worker/bootstep.py).
CELERY_TASK_QUEUES = (
    Queue("default", queue_arguments=dict(SCHEDULER_QUEUE_ARGUMENTS)),
    Queue("dead_letter", queue_arguments=dict(SCHEDULER_QUEUE_ARGUMENTS)),
)
CELERY_TASK_SEND_SENT_EVENT = True
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery's Django fixup closes every database connection before and after each task unless this is set,
# so each task paid for a new PostgreSQL backend (more than a no-op job's whole work). Set: a pool process
# keeps its connection (force-closed every N/2 tasks); nodes.heartbeat still drops an unusable or
# CONN_MAX_AGE-old one after each task, like Django does after each request.
CELERY_DB_REUSE_MAX = 1000
CELERY_TIMEZONE = "UTC"
CELERY_ENABLE_UTC = True
# Hard limit for any task: the longest job timeout plus room to record its result.
CELERY_TASK_TIME_LIMIT = SCHEDULER_MAX_TIMEOUT_SECONDS + 300
# On Redis an unacked message is redelivered after the visibility timeout: it must exceed the longest
# hard time limit, or a long job would run twice. Lost work is recovered from the database instead.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": CELERY_TASK_TIME_LIMIT + 3600,
    "queue_order_strategy": "priority",
    "priority_steps": list(range(10)),
    "sep": ":",
}
if BROKER_IS_AMQP:
    # RabbitMQ: every queue (node queues, default, dead_letter) declared alike by publishers and workers
    # (a queue redeclared with other arguments is a channel error). Unacked messages are never redelivered
    # by a timeout here; RabbitMQ's consumer_timeout (30 min by default) must exceed the longest job.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"confirm_publish": True}
    if SCHEDULER_RABBITMQ_QUEUE_TYPE == "quorum":
        CELERY_TASK_DEFAULT_QUEUE_TYPE = "quorum"
        CELERY_TASK_CREATE_MISSING_QUEUE_TYPE = "quorum"
        CELERY_WORKER_DETECT_QUORUM_QUEUES = True  # no global QoS on quorum queues
    else:
        CELERY_TASK_QUEUE_MAX_PRIORITY = 10  # as the node queues are declared (worker/bootstep.py)
CELERY_BEAT_SCHEDULER = "jobs.beat:JobScheduler"  # heap + leader lease over django-celery-beat models
# Periodic sweeps: each app adds its own keys here.


def _sweep(task: str, every: float, expire_after_periods: float) -> dict:
    """A beat entry whose message expires if no worker took it within a few periods (no pile-up)."""
    return {"task": task, "schedule": every, "options": {"expires": max(every, 1.0) * expire_after_periods}}


CELERY_BEAT_SCHEDULE: dict[str, dict] = {
    # nodes: counters checked against allocations (nodes/tasks.py).
    "nodes.repair_counters": _sweep("nodes.repair_counters", SCHEDULER_COUNTER_REPAIR_SECONDS, 2),
    # jobs: nodes missing heartbeats go offline and what they held is recovered; due retries become new
    # attempts, runs far past their timeout are lost; pending executions placed as capacity frees; the
    # broker reconciler (jobs/tasks.py).
    "jobs.reap_nodes": _sweep("jobs.reap_nodes", SCHEDULER_SWEEP_SECONDS, 5),
    "jobs.reconcile_broker": _sweep("jobs.reconcile_broker", SCHEDULER_RECONCILE_SECONDS, 2),
    "jobs.sweep_retries": _sweep("jobs.sweep_retries", SCHEDULER_SWEEP_SECONDS, 5),
    "jobs.dispatch_pending": _sweep("jobs.dispatch_pending", SCHEDULER_SWEEP_SECONDS, 5),
    # monitoring: alert evaluation and delivery; daily retention pruning (monitoring/tasks.py).
    "monitoring.evaluate_alerts": _sweep("monitoring.evaluate_alerts", SCHEDULER_ALERT_EVALUATE_SECONDS, 3),
    "monitoring.prune_retention": {
        "task": "monitoring.prune_retention",
        "schedule": 24 * 3600.0,
        "options": {"expires": 3600},
    },
    "monitoring.history_partitions": {
        "task": "monitoring.history_partitions",
        "schedule": 3600.0,
        "options": {"expires": 600},
    },
}
# jobs.execute goes to the chosen node's queue (set when published); dead-letter notices to their own queue.
CELERY_TASK_ROUTES = {
    "jobs.fire": {"queue": "default"},
    "jobs.dispatch_pending": {"queue": "default"},
    "jobs.sweep_retries": {"queue": "default"},
    "jobs.reap_nodes": {"queue": "default"},
    "jobs.reconcile_broker": {"queue": "default"},
    "nodes.repair_counters": {"queue": "default"},
    "jobs.dead_letter": {"queue": "dead_letter"},
}

# --- REST framework ---------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "knox.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.LimitOffsetPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_THROTTLE_RATES": {"login": env.str("SCHEDULER_LOGIN_THROTTLE", default="5/min")},
}
# --- API request limits (jobs/api) -------------------------------------------------------------
# Bodies over this are refused (413); also Django's own limit for forms and the admin.
DATA_UPLOAD_MAX_MEMORY_SIZE = knob.int(
    "SCHEDULER_MAX_REQUEST_BYTES", 2 * 1024 * 1024, low=1024, high=1073741824
)
# A job's payload (and any JSON object field) as compact JSON; room for an http job's 1 MiB body.
SCHEDULER_MAX_PAYLOAD_BYTES = knob.int("SCHEDULER_MAX_PAYLOAD_BYTES", 1280 * 1024, low=1, high=1073741824)
# Items of one bulk request (jobs/bulk/, jobs/bulk-run/) and of one job_submit --file list.
SCHEDULER_BULK_MAX_ITEMS = knob.int("SCHEDULER_BULK_MAX_ITEMS", 1000, low=1, high=100000)
# --- Tokens and login (accounts) ------------------------------------------------------------
SCHEDULER_TOKEN_TTL_HOURS = knob.float("SCHEDULER_TOKEN_TTL_HOURS", 10.0, low=0.01, high=8784)
SCHEDULER_LOGIN_MAX_FAILURES = knob.int("SCHEDULER_LOGIN_MAX_FAILURES", 5, low=1, high=10000)
SCHEDULER_LOGIN_LOCKOUT_SECONDS = knob.int("SCHEDULER_LOGIN_LOCKOUT_SECONDS", 60, low=1, high=86400)
# Proxies in front of web that append to X-Forwarded-For; 0 trusts no such header, so a client cannot
# dodge the login throttle by sending its own.
SCHEDULER_NUM_PROXIES = knob.int("SCHEDULER_NUM_PROXIES", 0, low=0, high=10)
REST_FRAMEWORK["NUM_PROXIES"] = SCHEDULER_NUM_PROXIES
REST_KNOX = {
    "TOKEN_TTL": timedelta(hours=SCHEDULER_TOKEN_TTL_HOURS),
    "AUTO_REFRESH": False,
    "USER_SERIALIZER": "accounts.api.UserSerializer",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Job scheduler API",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Several models have a "status": name each enum after its model (jobs/api, nodes/api).
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "jobs.models.Job.Status",
        "ExecutionStatusEnum": "jobs.models.Execution.Status",
        "DeadLetterStatusEnum": "jobs.models.DeadLetter.Status",
        "NodeStatusEnum": "nodes.models.Node.Status",
        "NodeTargetStatusEnum": "nodes.api.NODE_TARGET_STATUSES",
    },
}

_LOG_LEVEL = knob.str(
    "SCHEDULER_LOG_LEVEL", "INFO", choices={"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {
        "handlers": ["console"],
        "level": knob.str(
            "SCHEDULER_LOG_LEVEL", "INFO", choices={"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
        ),
    },
}

# --- Production hardening: `manage.py check --deploy` is clean with these ------------------
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = knob.bool("SCHEDULER_SECURE_SSL_REDIRECT", True)
    SECURE_HSTS_SECONDS = knob.int("SCHEDULER_HSTS_SECONDS", 31536000, low=0, high=63072000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_REFERRER_POLICY = "same-origin"
    X_FRAME_OPTIONS = "DENY"
    # The health endpoints are probed over plain HTTP from inside the network.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
    if SECURE_SSL_REDIRECT is False:
        SILENCED_SYSTEM_CHECKS = ["security.W008"]

# --- Knobs that depend on each other; then stop with one line per wrong value (none: nothing happens) --
if SCHEDULER_DEFAULT_TIMEOUT_SECONDS > SCHEDULER_MAX_TIMEOUT_SECONDS:
    knob.errors.append(
        f"SCHEDULER_DEFAULT_TIMEOUT_SECONDS={SCHEDULER_DEFAULT_TIMEOUT_SECONDS} is above "
        f"SCHEDULER_MAX_TIMEOUT_SECONDS={SCHEDULER_MAX_TIMEOUT_SECONDS}; expected at most that"
    )
if SCHEDULER_NODE_OFFLINE_AFTER_SECONDS <= SCHEDULER_HEARTBEAT_SECONDS:
    knob.errors.append(
        f"SCHEDULER_NODE_OFFLINE_AFTER_SECONDS={SCHEDULER_NODE_OFFLINE_AFTER_SECONDS} must be longer than "
        f"SCHEDULER_HEARTBEAT_SECONDS={SCHEDULER_HEARTBEAT_SECONDS} (a node would go offline between beats)"
    )
knob.check()
