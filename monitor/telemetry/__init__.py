"""What the sidecar tells the outside: Prometheus exposition and structured logs."""
