"""`accelerate launch` this instead of dia_tpu/finetune_acc_tpu.py: training as usual, but each process's audio
figures are made up, and differ between the processes, so that deciding from a process's own share would
split the processes (one stops early, the other trains on into a collective nobody joins).

    word errors per 10 words     step 2   4   6   8
    process 0                         5   4   3   2    improves at every evaluation
    process 1                         1   5   5   5    worse from step 4 on
    gathered WER                   0.30 0.45 0.40 0.35  best at step 2, no better at 4: with patience 1, stop
"""

import numpy as np

from dia_tpu import finetune_acc_tpu
from dia_tpu.evaluation.judge import Heard, Row
from dia_tpu.evaluation.signal import measure
from dia_tpu.evaluation.text import Errors
from dia_tpu.training.audio_eval import AudioEvaluation

ERRORS = {0: {2: 5, 4: 4, 6: 3, 8: 2}, 1: {2: 1, 4: 5, 6: 5, 8: 5}}


def made_up(self, generator, step):
    errors = Errors(ERRORS[self.accelerator.process_index][step], 10)
    signal = measure(np.zeros(0, np.float32), 44100)
    return [Row("made-up", "[S1] Made up.", signal, [], Heard("made up", errors, errors))]


AudioEvaluation._judge = made_up

if __name__ == "__main__":
    finetune_acc_tpu.main()
