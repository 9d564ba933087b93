"""Kizuna Partner stores: sells items that members pay for with points and card, and earn points on."""
