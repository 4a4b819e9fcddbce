from conveyor import shared_task


@shared_task
def alpha_task() -> str:
    return "alpha"
