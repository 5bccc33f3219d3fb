"""The project's celery beat scheduler (`jobs.beat:JobScheduler`) and its leader lease."""

from .lease import leader_status
from .scheduler import JobScheduler

__all__ = ["JobScheduler", "leader_status"]
