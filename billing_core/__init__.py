"""LAD Billing domain and persistence. Imports neither Flask nor Celery."""
