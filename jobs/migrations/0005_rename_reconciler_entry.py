"""The broker reconciler and the reaper moved from the nodes app to jobs (tasks jobs.reconcile_broker and
jobs.reap_nodes): drop the beat rows of the old static entries, which beat would otherwise keep sending to
tasks that no longer exist."""

from django.db import migrations


def drop_old_entry(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for old in ("nodes.reconcile_broker", "nodes.reap_stale"):
        PeriodicTask.objects.filter(name=old, task=old).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0004_execution_finished_at_index"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(drop_old_entry, migrations.RunPython.noop)]
