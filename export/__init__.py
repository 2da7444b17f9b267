"""Exporters per target: turn a gated model into a bundle."""
