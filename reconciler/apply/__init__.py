"""The applier: the only code that writes to an environment.
"""
