"""The WSGI entry point: `gunicorn wsgi:app`."""

from storefront import create_app

app = create_app()
