"""How Noman is served: gunicorn's configuration and what runs in its processes.

``config``  the gunicorn configuration (``gunicorn -c python:noman.server.config``);
            the root ``gunicorn.conf.py`` imports it for plain ``gunicorn``.
"""
