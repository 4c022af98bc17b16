"""Reading connref.yaml: line-aware YAML, value checks, and the loader that builds the frozen Config.
Local only: no network.
"""
