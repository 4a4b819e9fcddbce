# An old settings module with a typo the migration must point at.
CELERY_TASK_ACK_LATE = True
