"""Kizuna identity service."""
