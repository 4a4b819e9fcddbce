import celery


def is_app(value):
    return isinstance(value, celery.Celery)
