"""The evaluate and gate phases: score a model on Ray replicas, and let it through to deploy only if it passes."""
