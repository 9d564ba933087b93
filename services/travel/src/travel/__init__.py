"""Kizuna travel service."""
