"""Problem modules: node models, per-node data, local losses and metrics for each domain."""
