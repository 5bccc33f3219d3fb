"""The Celery application: the only module that touches the app object."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")

app = Celery("scheduler_project")
app.config_from_object("django.conf:settings", namespace="CELERY")  # queues: CELERY_TASK_QUEUES
app.autodiscover_tasks()
# Each worker registers its Node, consumes node.<name> and heartbeats (worker.bootstep, loaded by name
# once Django is set up).
app.steps["worker"].add("worker.bootstep:NodeStep")
