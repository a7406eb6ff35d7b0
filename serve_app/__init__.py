"""The autocompress service: the REST job API (``serve_app.api``) with its job launcher, and model serving.

``uvicorn serve_app.api:app`` runs the job API on its own (127.0.0.1 unless told otherwise); the
Ray Serve application mounts the same FastAPI app (``serve_app.api.create_app``) as its ingress.
"""
