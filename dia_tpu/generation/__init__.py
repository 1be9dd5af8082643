"""Speech from text: transformers' Dia generation with seeded sampling, voice prompts, and wav files."""
