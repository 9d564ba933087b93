"""Kizuna points service."""
