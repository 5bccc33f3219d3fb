"""The Celery application: the only module that touches the app object."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")

app = Celery("scheduler_project")
app.config_from_object("django.conf:settings", namespace="CELERY")
# Shared queues; each worker also consumes its own node queue (see worker.bootstep).
app.conf.task_queues = (
    Queue("default", queue_arguments={"x-max-priority": 10}),
    Queue("dead_letter"),
)
app.autodiscover_tasks()
# Each worker registers its Node, consumes node.<name> and heartbeats (worker.bootstep, loaded by name
# once Django is set up).
app.steps["worker"].add("worker.bootstep:NodeStep")
