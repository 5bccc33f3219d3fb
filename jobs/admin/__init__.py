"""Admin of the jobs app: jobs (saved through the services), executions, retries, dead letters."""

from . import executions, jobs  # noqa: F401 - registers the admin classes
