"""`dkdm serve`: models behind an HTTP API and a web page, with a request batcher, limits and metrics."""
