"""Settings of the stages that make training data: `dia-tpu prepare` (sources -> codes) and `dia-tpu
transcribe` (long recordings -> a source), with the choices they share with the rest of the schema."""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from typing import Literal

# Accelerate's mixed-precision modes, for training, prepare's codec and `dia-tpu bench`.
Precision = Literal["no", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
# Training's choices add "auto": bf16 where the device runs it natively, fp32 elsewhere (dia_tpu.precision).
TrainPrecision = Literal["auto", "no", "bf16", "fp16"]
# What `dia-tpu prepare` reads: detected, or a folder with metadata.csv, audio with sidecar transcripts, a
# Hugging Face dataset.
SourceKind = Literal["auto", "metadata", "sidecar", "hf"]
SOURCE_KINDS: tuple[str, ...] = typing.get_args(SourceKind)


@dataclass
class PrepareConfig:
    # What --input is: "auto" (detected), "metadata" (folder + metadata.csv: LJSpeech or file|text[|speaker]),
    # "sidecar" (audio files, each with a same-stem .txt transcript), "hf" (a Hugging Face dataset: hub id,
    # save_to_disk folder, or parquet/jsonl/csv files). Files ending .npy/.pt/.safetensors in a metadata.csv
    # or sidecar folder are codes encoded elsewhere and are imported without the codec.
    kind: SourceKind = "auto"
    # metadata.csv field delimiter, and the field names in order ([] : the header line if it names a
    # `text` field, else LJSpeech's id|text|normalized_text when there is a wavs/ folder, else file|text|speaker).
    delimiter: str = "|"
    columns: list[str] = field(default_factory=list)
    # Which column (or metadata field) holds what. `audio_column` names the file field of a metadata.csv
    # ("file", or "id" for LJSpeech) or the audio column of a Hugging Face dataset.
    text_column: str = "text"
    audio_column: str = "audio"
    speaker_column: str = "speaker"
    language_column: str = "language"
    # Word or segment timing ([{start, end, text}], seconds): a column, or a same-stem .json sidecar.
    segments_column: str = "segments"
    # Hugging Face datasets: split, config name, and streaming (rows are read as they download).
    split: str = "train"
    hf_config: str | None = None
    streaming: bool = False
    # Codes files: "CT" ([codebooks, frames]), "TC", or "auto" (the axis whose size is the codebook count).
    codes_layout: Literal["auto", "CT", "TC"] = "auto"
    # Longer clips are split at silences between timed segments when the source gives timing, else skipped.
    max_seconds: float = 30.0
    # Audio below this sample rate is skipped (it cannot carry what the codec encodes).
    min_sample_rate: int = 8000
    # Stereo models: left and right encoded separately into 2 x codebooks (mono input is duplicated).
    stereo: bool = False
    # Unicode NFC and collapsed whitespace in transcripts.
    normalize_text: bool = True
    # Items per work shard: the unit of resuming and of splitting work between processes.
    shard_size: int = 256
    # Codec batch size (only clips of equal length share a batch: padding would change codes). Windowed
    # encoding (`window_seconds`, the default on a CPU) takes clips one at a time.
    batch_size: int = 8
    # Codec precision on GPU: "no" (fp32, codes identical everywhere), "bf16" or "fp16" (faster, codes may differ).
    mixed_precision: Precision = "no"
    # The codec's Snake activations as one compiled kernel each (`dia_tpu.model.codec.fuse_snake`): the same
    # codes, encoding about twice as fast on CPU, after a compilation of a few seconds per process.
    compile: bool = True
    # Clips encoded one at a time in equal windows of about this many seconds (a clip up to 1.5 windows long
    # whole), each with the codec's reach of audio on either side: the same codes as the whole clip (tested). On
    # a CPU, where a window's activations stay in cache, 5-12 s clips encode 1.3-1.4 times as fast.
    # None: 2 s on a CPU, whole clips in batches elsewhere; 0: whole.
    window_seconds: float | None = None
    # Stop at the first bad input, naming it, instead of skipping it with a reason.
    strict: bool = False
    # Dia2: what times the words of a clip the source gives no word timings for (`dia_tpu.listen.align`):
    # "espeak" (espeak-ng's speech warped onto the clip, any language it speaks), "pocketsphinx" (English),
    # "ctc" / "ctc:<hub id or folder>" (a wav2vec2-style CTC model, facebook/wav2vec2-base-960h by default, on a
    # GPU where there is one), or "none" (such clips are skipped with that reason). Word timings from the source
    # are read as they are.
    aligner: str = "espeak"


@dataclass
class TranscribeConfig:
    # `dia-tpu transcribe`: long recordings -> segments, transcripts and [S1]/[S2] turns (dia_tpu.transcribe).
    # Segments are at most prepare.max_seconds long.
    # Speech recogniser: whisper (recommended: openai/whisper-large-v3-turbo), whisper:<hub id or folder>, or
    # pocketsphinx (offline, English, weak); and the language Whisper listens for.
    asr: str = "whisper"
    language: str = "en"
    # Speaker encoder: resemblyzer (offline), xvector (microsoft/wavlm-base-plus-sv) or xvector:<hub id or folder>.
    speaker: str = "resemblyzer"
    # Speakers per recording: a count, or 0 to estimate it (clusters are merged while their voices are at
    # least speaker_threshold alike, cosine similarity of the encoder's embeddings).
    speakers: int = 0
    speaker_threshold: float = 0.75
    # A diarizer instead of clustering: none, or pyannote:<hub id or folder> (e.g.
    # pyannote/speaker-diarization-3.1; gated, and pyannote.audio installed). It decides who speaks when (with
    # `speakers` as the count when given); the speaker encoder still names voices and measures similarity.
    diarizer: str = "none"
    # A stretch less alike than this to its own speaker is dropped as an unclear voice (noise, overlap).
    min_voice_similarity: float = 0.5
    # One voice name across recordings: speakers of different recordings at least this alike share a
    # `voice_NN` id in the speaker column (0: ids stay per recording, `<recording>:<n>`).
    match_voices: float = 0.0
    # Voice activity (Silero VAD): its speech threshold, and the shortest pause between two stretches.
    vad_threshold: float = 0.5
    min_silence: float = 0.3
    # Segments: at least min_seconds; a pause longer than max_pause ends one.
    min_seconds: float = 1.0
    max_pause: float = 1.5
    # Filters: quieter than min_rms_db (dBFS), more than max_clipped of samples at full scale, or (Whisper) a
    # transcript less sure than min_confidence (geometric mean token probability; 0: off).
    min_rms_db: float = -45.0
    max_clipped: float = 0.001
    min_confidence: float = 0.0
    # Transcripts: "numbers" writes numbers and symbols out in words ("3%" -> "three percent"); "none" keeps
    # the recogniser's text.
    normalize: Literal["numbers", "none"] = "numbers"
    # Where the recogniser and speaker encoder run (cpu, cuda, cuda:1, ...).
    device: str = "cpu"
