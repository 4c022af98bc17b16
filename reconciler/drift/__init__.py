"""Drift detection (pure) and its renderers.
"""
