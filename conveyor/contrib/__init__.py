"""Integrations with other frameworks; each is opted into explicitly."""
