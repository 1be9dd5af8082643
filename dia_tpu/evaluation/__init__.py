"""Judging generated speech: its length and ending, degeneration, intelligibility (speech recognisers) and voice
(speaker embeddings)."""
