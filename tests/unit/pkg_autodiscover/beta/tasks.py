from conveyor import shared_task


@shared_task
def beta_task() -> str:
    return "beta"
