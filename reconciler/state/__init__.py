"""What connref manages per environment and what it last applied, and the locks that keep runs apart.
"""
