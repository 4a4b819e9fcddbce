"""Integrations with other frameworks; each is opted into explicitly."""

__all__: list[str] = []
