"""Long recordings -> a dataset source: voice activity, speakers, transcripts, segments (`dia-tpu transcribe`)."""
