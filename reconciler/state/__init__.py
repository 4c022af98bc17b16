"""What connref manages per environment and what it last applied, and the locks that keep runs apart.

``model`` (the state document), ``record`` (the state after an apply), ``local`` (the local-directory
backend's files), ``lock`` (its file locks), ``render`` (``connref state list/show`` text).
"""
