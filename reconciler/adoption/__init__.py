"""Adopting and tidying environments: import into YAML, lint, and deployment settings.
"""
