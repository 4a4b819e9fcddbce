"""The Django test settings plus django-celery-beat and -results: the copy's source tables."""

from tests.django.settings import *  # noqa: F403
from tests.django.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django_celery_beat", "django_celery_results"]
