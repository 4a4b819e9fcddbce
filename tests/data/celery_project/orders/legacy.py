# Not imported by the tasks: a name with no counterpart, for the report.
from celery.exceptions import CPendingDeprecationWarning

WARNING = CPendingDeprecationWarning
