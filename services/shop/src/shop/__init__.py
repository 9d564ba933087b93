"""Kizuna shop service."""
