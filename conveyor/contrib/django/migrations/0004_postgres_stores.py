"""Create the PostgreSQL broker's tables with ``manage.py migrate``.

When the project's Conveyor app keeps its broker (or results, or task
events) in PostgreSQL *in the database being migrated*, this creates those
tables now, as
``conveyor db upgrade`` does, so the deploy step that runs migrations with
the privileged role also prepares the queue.  With any other broker, or a
PostgreSQL broker in another database, it does nothing (that database is
not Django's to migrate: run ``conveyor db upgrade`` for it).  Later
versions of the tables upgrade themselves the same way: by opening them.
Reversing it leaves the tables alone (they may hold queued tasks).
"""

from __future__ import annotations

from typing import Any

from django.db import migrations


def create_postgres_stores(apps: Any, schema_editor: Any) -> None:
    connection = schema_editor.connection
    if connection.vendor != "postgresql":
        return
    from conveyor._events import events_url, store_for
    from conveyor._state import current_app
    from conveyor.contrib.django._transaction import same_database

    app = current_app()
    for url, open_store in ((app.conf.broker_url, lambda: app.broker),
                            (app.conf.result_url, lambda: app.backend),
                            (events_url(app), lambda: store_for(app).workers())):
        if url.startswith("postgres") and same_database(connection, url):
            open_store()  # opening (the event store: first use) creates or upgrades the tables


class Migration(migrations.Migration):
    dependencies = [("conveyor", "0003_celery_priority_order")]
    operations = [migrations.RunPython(create_postgres_stores, migrations.RunPython.noop,
                                       elidable=True)]
