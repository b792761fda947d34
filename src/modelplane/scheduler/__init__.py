"""The control loop that makes running replicas match deployments."""
