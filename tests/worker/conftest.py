from tests.jobs.conftest import shell_user  # noqa: F401 - a user allowed to submit shell jobs
