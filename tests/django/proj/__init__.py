"""Importing the project imports its app, as ``from .celery import app`` does."""

from tests.django.proj.conveyor import app

__all__ = ("app",)
