from celery import chain, shared_task
from celery.exceptions import SoftTimeLimitExceeded
from celery.utils.log import get_task_logger

logger = get_task_logger(__name__)


@shared_task(bind=True, max_retries=3)
def add(self, x, y):
    # Keep this comment: the rewrite must not touch it (celery stays here).
    logger.info("adding %s and %s", x, y)
    return x + y


@shared_task(soft_time_limit=30)
def slow():
    try:
        return "done"
    except SoftTimeLimitExceeded:
        return "cut short"


def pipeline():
    return chain(add.s(1, 2), add.s(3))

