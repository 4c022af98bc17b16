"""The bottom layer: frozen domain data (Desired, Live) and the naming rules. No I/O, no imports from
other layers.
"""
