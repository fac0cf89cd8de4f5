"""Test helpers for kallichore and its users (a fake kernel, ...)."""
