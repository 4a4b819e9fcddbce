"""Importing the project imports its Conveyor app, so Django processes always have it."""

from shop.conveyor import app

__all__ = ("app",)
