"""Stock levels, synced from an external feed."""

from django.db import models


class StockItem(models.Model):
    sku = models.CharField(max_length=20, unique=True)
    quantity = models.IntegerField(default=0)
    synced_at = models.DateTimeField(null=True)

    def __str__(self) -> str:
        return f"{self.sku}: {self.quantity}"
