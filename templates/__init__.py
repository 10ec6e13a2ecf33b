"""Jinja2 templates and CSS of the evidence pack (package data)."""
