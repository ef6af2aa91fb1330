"""Domain logic of the chenu.agents collection, importable and testable without Ansible."""

__version__ = "0.1.0"
