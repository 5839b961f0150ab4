"""asyncgate: a reverse proxy that gives any synchronous HTTP endpoint an asynchronous mode."""

__version__ = "0.1.0"
