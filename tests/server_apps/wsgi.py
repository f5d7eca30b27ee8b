"""``app`` for servers that want a module-level WSGI callable (uWSGI)."""

from taskapp import create_app

app = create_app()
