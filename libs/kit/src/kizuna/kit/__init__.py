"""The Kizuna service kit."""
