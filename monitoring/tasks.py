from celery import shared_task


@shared_task(name="monitoring.ping")
def ping() -> str:
    """Answer 'pong': proves a worker takes tasks from the broker."""
    return "pong"
