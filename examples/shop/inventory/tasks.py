"""Inventory sync: automatic retries, only for network errors, with capped jittered backoff."""

import json
from urllib.error import URLError
from urllib.request import urlopen

from django.conf import settings
from django.utils import timezone

from conveyor import shared_task
from inventory.models import StockItem


@shared_task(
    bind=True,
    autoretry_for=(URLError, ConnectionError, TimeoutError),  # HTTP 5xx is a URLError too
    retry_kwargs={"max_retries": 5},
    retry_backoff=0.5,      # 0.5 s, 1 s, 2 s, ... (seconds; True means 1 s)
    retry_backoff_max=5,
    retry_jitter=True,
)
def sync_inventory(self, url: str | None = None) -> dict:
    with urlopen(url or settings.INVENTORY_FEED_URL, timeout=5) as response:
        feed = json.load(response)
    now = timezone.now()
    for sku, quantity in feed["stock"].items():
        StockItem.objects.update_or_create(sku=sku, defaults={"quantity": quantity,
                                                              "synced_at": now})
    return {"items": len(feed["stock"]), "attempts": self.request.retries + 1}
