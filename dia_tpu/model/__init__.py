"""The model side: building and loading Dia (transformers or native format, hub or local), the codec, LoRA
adapters and freezing, stereo and initialisation. Importing this package loads none of its modules."""
