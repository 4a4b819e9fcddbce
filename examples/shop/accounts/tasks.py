"""Account tasks: an idempotent e-mail and a periodic cleanup.

Models are imported at module level: the worker sets Django up before it
imports this module, so the "import models inside the task" workaround is
not needed.
"""

from django.contrib.sessions.models import Session
from django.core.mail import send_mail
from django.db import transaction
from django.utils import timezone

from accounts.models import Customer, EmailLog
from conveyor import shared_task
from conveyor.log import get_task_logger

logger = get_task_logger(__name__)


@shared_task(bind=True, max_retries=3, default_retry_delay=2)
def send_welcome_email(self, customer_id: int) -> dict:
    """Send the welcome mail at most once per customer, however often the task runs.

    The log row and the send share a transaction: if sending fails, the row
    rolls back and a retry sends; if the row exists, a repeat (a retry, a
    redelivery, a double click) does nothing.
    """
    customer = Customer.objects.get(pk=customer_id)
    with transaction.atomic():
        _, created = EmailLog.objects.get_or_create(customer=customer, kind="welcome")
        if not created:
            logger.info("welcome mail to %s already sent", customer.email)
            return {"status": "already_sent", "to": customer.email}
        send_mail("Welcome to the shop", f"Hello {customer.name}!", None, [customer.email])
    return {"status": "sent", "to": customer.email}


@shared_task
def cleanup_expired_sessions() -> int:
    deleted, _ = Session.objects.filter(expire_date__lt=timezone.now()).delete()
    return deleted
