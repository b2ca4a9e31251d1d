"""Text stage: encoders, condition text, long context and the embedding cache (see docs/architecture.md)."""
