"""The wire contract: vigil/v1/*.proto, the only source of the API. Installed as the `vigil_api` package (its
data: the .proto files), which services/wire.py compiles at import."""
