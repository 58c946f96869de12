"""Celery entrypoint: the app and thin tasks that call billing_core."""
