"""Judging generated speech: its length and ending, degeneration, intelligibility (speech recognisers) and voice
(speaker embeddings), with the listening models of `dia_tpu.listen`; and the score checkpoints are selected by
(`selection`)."""
