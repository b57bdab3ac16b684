"""Helpers, fixtures and small apps the tests share."""
