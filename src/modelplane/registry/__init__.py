"""Control-plane state: metadata store, blob store and the registry service."""
