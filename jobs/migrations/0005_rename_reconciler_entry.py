"""The broker reconciler moved from the nodes app to jobs (task jobs.reconcile_broker): drop the beat row of
the old static entry, which beat would otherwise keep sending to a task that no longer exists."""

from django.db import migrations


def drop_old_entry(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name="nodes.reconcile_broker", task="nodes.reconcile_broker").delete()


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0004_execution_finished_at_index"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(drop_old_entry, migrations.RunPython.noop)]
