"""The data side: sources of audio and transcripts, audio decoding, `prepare` and its shards, the codes
dataset, text and code ids, and fixed-shape batches."""
