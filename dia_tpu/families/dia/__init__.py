"""Nari Labs' Dia (1.6B), as transformers' `DiaForConditionalGeneration` over DAC codes. Its model, codec, byte
text and delay grid live where they were first built (`dia_tpu.model`, `dia_tpu.data`, `dia_tpu.generation`);
this package holds its loss, its set-up for training and the family entry (`family.FAMILY`)."""
