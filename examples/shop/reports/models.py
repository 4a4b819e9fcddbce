"""Reports and queue snapshots written by periodic tasks."""

from django.db import models


class Report(models.Model):
    name = models.CharField(max_length=100)
    created = models.DateTimeField(auto_now_add=True)
    orders = models.IntegerField()
    revenue = models.DecimalField(max_digits=12, decimal_places=2)


class QueueSnapshot(models.Model):
    taken = models.DateTimeField(auto_now_add=True)
    depths = models.JSONField()
