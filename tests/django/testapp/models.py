"""Models the test tasks read and write."""

from django.db import models


class Order(models.Model):
    number = models.CharField(max_length=32, unique=True)
    status = models.CharField(max_length=16, default="new")


class Touch(models.Model):
    """A row per task run: proof that a task ran, where, and on which connection."""

    key = models.CharField(max_length=100, db_index=True)
    pid = models.IntegerField()
    backend_pid = models.IntegerField(null=True)
