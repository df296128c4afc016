"""Generated gRPC stubs for lema's v1 contracts (do not edit; see protos/generate.py)."""
