"""Per-step cell export."""
