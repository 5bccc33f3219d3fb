from django.contrib.auth.models import AbstractUser


class User(AbstractUser):
    """The project's user; roles are groups (viewer, submitter, operator, admin)."""

    class Meta:
        db_table = "accounts_user"
