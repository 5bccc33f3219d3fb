"""Admin of the jobs app: jobs (saved through the services), executions, retries, dead letters, and
django-celery-beat's schedule rows (unique)."""

from . import beat, executions, jobs  # noqa: F401 - registers the admin classes
