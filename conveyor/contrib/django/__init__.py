"""Conveyor for Django projects: add ``"conveyor.contrib.django"`` to INSTALLED_APPS.

What the app brings (nothing happens unless it is installed):

* models, migrations and admin for periodic tasks (``DatabaseScheduler``) and
  task results (``result_backend = "django-db"``), with django-celery-beat's
  and django-celery-results' model and field names;
* database connection hygiene around every task, and after fork;
* ``task.delay_on_commit()`` and the ``task_enqueue_on_commit`` setting;
* a ``django.tasks`` backend (``conveyor.contrib.django.tasks.ConveyorBackend``);
* ``manage.py conveyor ...`` management commands.

See docs/django.md.
"""

__all__: list[str] = []
