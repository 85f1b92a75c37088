"""How Noman is served: gunicorn's configuration and what runs in its processes.

``config``       the gunicorn configuration (``gunicorn -c python:noman.server.config``);
                 the root ``gunicorn.conf.py`` imports it for plain ``gunicorn``.
``master``       what the gunicorn master does once it listens (its ``when_ready``
                 hook), and the port probe ``noman serve`` runs before starting gunicorn.
``worker``       the gevent worker class each worker process runs (``NomanWorker``):
                 read deadlines, bounded TLS handshakes, JSON answers to malformed HTTP.
``environment``  the one parser of the numeric ``NOMAN_*`` variables they read.
"""
