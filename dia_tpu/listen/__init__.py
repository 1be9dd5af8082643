"""Models that listen to speech, shared by transcription (`dia_tpu.transcribe`) and evaluation
(`dia_tpu.evaluation`): speech recognisers (`asr`), speaker encoders (`speaker`), a MOS predictor (`quality`), and
`Judges`, the set of them loaded by name (`judges`)."""
