"""connref: Terraform-style plan/apply for Power Automate connection references."""

__version__ = "0.1.0"
