"""slides stage."""
