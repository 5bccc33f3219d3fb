"""Beat scheduler variants that only tests start (by dotted path, in their own `celery beat` process)."""

import os

from jobs.beat import JobScheduler
from jobs.beat.lease import LEASE_KEY


class UnleasedScheduler(JobScheduler):
    """A lease key of its own per process: every such beat leads, so every one sends every slot."""

    lease_key = f"{LEASE_KEY}:unleased:{os.getpid()}"
