"""Upgrade the PostgreSQL stores' tables with ``manage.py migrate`` (broker schema v3).

Version 3 of the broker's tables gives ``conveyor_messages`` per-table
autovacuum settings (ADR 0019), which only the table's owner may set.  The
deploy step that runs migrations with the role that made the tables runs
this, so workers running as a role with fewer rights find them upgraded
already; it is ``0004_postgres_stores`` again (opening each store upgrades
its tables), and does nothing for stores outside Django's database.
"""

from __future__ import annotations

from importlib import import_module

from django.db import migrations

create_postgres_stores = import_module(
    "conveyor.contrib.django.migrations.0004_postgres_stores").create_postgres_stores


class Migration(migrations.Migration):
    dependencies = [("conveyor", "0004_postgres_stores")]
    operations = [migrations.RunPython(create_postgres_stores, migrations.RunPython.noop,
                                       elidable=True)]
