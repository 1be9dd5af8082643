"""Nari Labs' Dia2: a streaming dialogue model over the Mimi codec, a backbone over frames and a depformer over
each frame's codebooks, with two text streams lined up with the audio by a state machine."""
