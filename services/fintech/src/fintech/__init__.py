"""Kizuna fintech service."""
