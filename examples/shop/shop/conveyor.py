"""The shop's Conveyor app: the file Celery projects call ``celery.py``.

``conveyor -A shop worker`` finds ``app`` here.  Settings come from Django's
settings, the ``CELERY_*`` names (kept as they were); tasks are found in
every installed app's ``tasks.py`` when a worker or beat starts, after
Django is set up.
"""

import os

from conveyor import Conveyor

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "shop.settings")

app = Conveyor("shop")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
