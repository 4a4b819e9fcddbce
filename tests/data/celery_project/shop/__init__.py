# Load the task app whenever Django starts, as Celery's guide recommends.
from .celery import app as celery_app

__all__ = ("celery_app",)
