"""dia_tpu: fine-tune Nari Labs' Dia text-to-speech model with Hugging Face Accelerate on CPU, GPUs and TPUs."""

__version__ = "0.1.0"
