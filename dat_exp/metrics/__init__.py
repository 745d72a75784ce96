"""Model facts (parameters, FLOPs) and latency."""
