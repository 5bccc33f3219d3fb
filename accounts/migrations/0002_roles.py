"""Create the role groups (viewer, submitter, operator, admin) with their model permissions.

The mapping is frozen here as of this migration; accounts.roles holds the live one, which
services.roles_sync applies after every migrate (so permissions added later, like jobs.run_shell, reach
their roles too).
"""

from django.contrib.auth.management import create_permissions
from django.db import migrations
from django.db.models import Q

VIEW = [
    "jobs.view_job", "jobs.view_jobschedule", "jobs.view_execution", "jobs.view_jobretry",
    "jobs.view_deadletter", "nodes.view_node",
]
SUBMIT = VIEW + [
    "jobs.add_job", "jobs.change_job", "jobs.delete_job", "jobs.add_jobschedule",
    "jobs.change_jobschedule", "jobs.delete_jobschedule", "jobs.add_execution", "jobs.change_execution",
]
OPERATE = SUBMIT + [
    "jobs.change_jobretry", "jobs.change_deadletter", "nodes.add_node", "nodes.change_node",
    "nodes.view_resourceallocation", "jobs.run_shell",
]
ROLES = {
    "viewer": VIEW,
    "submitter": SUBMIT,
    "operator": OPERATE,
    "admin": OPERATE + ["jobs.*", "nodes.*", "monitoring.*", "accounts.*", "auth.*", "django_celery_beat.*"],
}


def create_roles(apps, schema_editor):
    db = schema_editor.connection.alias
    # Permissions are normally created after all migrations; create them now so the groups get theirs.
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, apps=apps, verbosity=0, using=db)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for role, wanted in ROLES.items():
        group, _ = Group.objects.using(db).get_or_create(name=role)
        query = Q(pk__in=[])
        for name in wanted:
            app_label, _, codename = name.partition(".")
            if codename == "*":
                query |= Q(content_type__app_label=app_label)
            else:
                query |= Q(content_type__app_label=app_label, codename=codename)
        # A permission that does not exist yet (jobs.run_shell before the jobs app defines it) is skipped.
        group.permissions.add(*Permission.objects.using(db).filter(query))


def delete_roles(apps, schema_editor):
    apps.get_model("auth", "Group").objects.using(schema_editor.connection.alias).filter(
        name__in=list(ROLES)
    ).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("jobs", "0002_initial"),
        ("nodes", "0001_initial"),
    ]

    operations = [migrations.RunPython(create_roles, delete_roles)]
