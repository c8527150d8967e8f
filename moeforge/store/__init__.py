"""Content-addressed artifact store: the Store protocol, a local folder backend and an S3 backend."""
