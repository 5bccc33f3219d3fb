"""The Celery application: the only module that touches the app object."""

import os

from celery import Celery
from kombu import Queue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_project.settings")

app = Celery("scheduler_project")
app.config_from_object("django.conf:settings", namespace="CELERY")


def queue_arguments() -> dict[str, object]:
    """How every queue is declared, by publishers and workers alike (RabbitMQ refuses a redeclaration with
    other arguments): priorities (Redis ignores the argument), or quorum queues on RabbitMQ if so set."""
    from django.conf import settings

    if settings.BROKER_IS_AMQP and settings.SCHEDULER_RABBITMQ_QUEUE_TYPE == "quorum":
        return {"x-queue-type": "quorum"}
    return {"x-max-priority": 10}


# Shared queues; each worker also consumes its own node queue (see worker.bootstep).
app.conf.task_queues = (
    Queue("default", queue_arguments=queue_arguments()),
    Queue("dead_letter", queue_arguments=queue_arguments()),
)
app.autodiscover_tasks()
# Each worker registers its Node, consumes node.<name> and heartbeats (worker.bootstep, loaded by name
# once Django is set up).
app.steps["worker"].add("worker.bootstep:NodeStep")
