"""The data plane: replicas that run models and the gateway that routes to them."""
