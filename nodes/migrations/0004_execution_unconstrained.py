"""The allocation's execution without a foreign key constraint: executions are partitioned (jobs 0010 drops
the constraint with the old table and puts it back on the way down), so this is the model state only."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("nodes", "0003_worker_incarnation"),
        ("jobs", "0010_partitioned_history"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(
                    model_name="resourceallocation",
                    name="execution",
                    field=models.OneToOneField(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="allocation",
                        to="jobs.execution",
                    ),
                ),
            ],
        ),
    ]
