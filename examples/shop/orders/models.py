"""Products and orders."""

from decimal import Decimal

from django.db import models

from accounts.models import Customer


class Product(models.Model):
    sku = models.CharField(max_length=20, unique=True)
    name = models.CharField(max_length=100)
    price = models.DecimalField(max_digits=8, decimal_places=2)

    def __str__(self) -> str:
        return self.sku


class Order(models.Model):
    STATUSES = [(s, s) for s in ("new", "valid", "invalid", "charged", "confirmed",
                                 "processed")]

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE)
    product = models.ForeignKey(Product, on_delete=models.PROTECT)
    quantity = models.PositiveIntegerField(default=1)
    status = models.CharField(max_length=12, choices=STATUSES, default="new")
    payment_ref = models.CharField(max_length=40, blank=True)
    created = models.DateTimeField(auto_now_add=True)
    # Demo knob: the fake payment gateway refuses this order this many times.
    gateway_failures = models.PositiveSmallIntegerField(default=0)

    @property
    def total(self) -> Decimal:
        return self.product.price * self.quantity

    def __str__(self) -> str:
        return f"order {self.pk} ({self.status})"
