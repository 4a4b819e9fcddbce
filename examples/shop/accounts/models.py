"""Customers, and a log that makes e-mail tasks idempotent."""

from django.db import models


class Customer(models.Model):
    name = models.CharField(max_length=100)
    email = models.EmailField(unique=True)
    joined = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.email


class EmailLog(models.Model):
    """One row per (customer, kind): the unique constraint is the idempotency guard."""

    customer = models.ForeignKey(Customer, on_delete=models.CASCADE)
    kind = models.CharField(max_length=40)
    sent_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["customer", "kind"],
                                               name="one_email_per_kind")]
