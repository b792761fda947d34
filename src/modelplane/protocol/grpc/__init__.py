"""Generated V2 gRPC stubs (see README.md)."""
