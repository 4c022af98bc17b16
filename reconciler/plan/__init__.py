"""The pure planner, the operations it produces, their renderers, and saved plan files.
"""
