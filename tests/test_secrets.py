"""Credentials in `output.mirror` stay in the process: URLs are redacted in printed lines and errors, saved configs,
tracker hyper-parameters and the report page, and `push` uploads no secret and no absolute local path."""

from __future__ import annotations

import dataclasses
import json
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, tiny

from dia_tpu import publish
from dia_tpu.artifacts import RunFolder, mark_complete
from dia_tpu.config import load, read_saved, redact_tree, redact_url, scrub
from dia_tpu.publish.paths import public_config
from dia_tpu.report import render
from dia_tpu.training.meter import flat_hparams
from dia_tpu.training.mirror import Mirror, MirrorError
from dia_tpu.training.recipe import train


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("memory://user:s3cr3t@bucket/run", "memory://***@bucket/run"),
        ("s3://AKIAEXAMPLE:wJalr%2FXUtnFEMI@bucket/run", "s3://***@bucket/run"),
        ("https://ghp_token123@github.com/org/repo.git", "https://***@github.com/org/repo.git"),
        (
            "https://host/f?X-Amz-Credential=AK&X-Amz-Signature=ab12&page=2",
            "https://host/f?X-Amz-Credential=***&X-Amz-Signature=***&page=2",
        ),
        (
            "https://acct.blob.core.windows.net/c/run?sv=2022&sig=Zm9v%3D#top",
            "https://acct.blob.core.windows.net/c/run?sv=2022&sig=***#top",
        ),
        (
            "gs://b/run?ACCESS_TOKEN=ya29&Api-Key=k&client_secret=s&pwd=p",
            "gs://b/run?ACCESS_TOKEN=***&Api-Key=***&client_secret=***&pwd=***",
        ),
        ("mirror: best is on memory://u:pass@b/r (16.0 MB)", "mirror: best is on memory://***@b/r (16.0 MB)"),
    ],
)
def test_credentials_in_urls_are_redacted(text, expected):
    assert redact_url(text) == expected
    assert redact_url(expected) == expected


@pytest.mark.parametrize(
    "text",
    [
        "/home/u/runs/codes",
        "runs/demo",
        "nari-labs/Dia-1.6B-0626",
        "gs://bucket/run",
        "hf://buckets/user/bucket/run",
        "https://huggingface.co/org/name?revision=main&download=true",
        "memory://bucket/run@v2",  # an @ in the path is not userinfo
        "whisper:openai/whisper-large-v3-turbo",
        "key=value token: not a URL",
        "",
    ],
)
def test_what_carries_no_credentials_stays_as_it_is(text):
    assert redact_url(text) == text


def test_a_tree_is_redacted_in_every_string_and_a_backend_message_in_every_copy_of_the_secret():
    tree = {
        "output": {"mirror": "s3://K:longsecret@b/run", "dir": "/runs/x"},
        "prompts": [{"audio": "https://h/a.wav?token=t0k3n"}, 3, None],
        "lr": 1e-4,
    }
    assert redact_tree(tree) == {
        "output": {"mirror": "s3://***@b/run", "dir": "/runs/x"},
        "prompts": [{"audio": "https://h/a.wav?token=***"}, 3, None],
        "lr": 1e-4,
    }
    assert tree["output"]["mirror"] == "s3://K:longsecret@b/run"  # the live value is left alone
    # The memory filesystem names its paths with the userinfo but without the scheme.
    message = "[Errno 2] No such file: '/K:longsecret@b/run/.probe'"
    assert scrub(message, "memory://K:longsecret@b/run") == "[Errno 2] No such file: '/***@b/run/.probe'"
    assert redact_url(message) == message  # no scheme: redact_url alone would not see it


def test_tracker_hyperparameters_are_redacted():
    cfg = load(ROOT / "configs/demo.yaml", ["output.mirror=s3://KEY:SECRET@bucket/run"])
    assert cfg.output.mirror == "s3://KEY:SECRET@bucket/run"
    assert flat_hparams(cfg)["output.mirror"] == "s3://***@bucket/run"


def test_mirror_lines_and_errors_name_the_redacted_url(tmp_path, monkeypatch):
    # A local folder reached as a URL, its signature in the query: fsspec's local filesystem takes the query as
    # part of the folder's name, so the secret is in every path the backend reports.
    secret = f"sig{uuid.uuid4().hex}"
    url = f"file://{tmp_path}/bucket?X-Amz-Signature={secret}"
    run, lines = RunFolder(tmp_path / "run"), []
    folder = run.best
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"weights")
    mark_complete(folder, 1)
    with Mirror(url, run, 2, report=lines.append) as mirror:
        mirror.send(folder, 1)
    assert mirror.mark("best")["step"] == 1 and Path(f"{tmp_path}/bucket?X-Amz-Signature={secret}/best").is_dir()
    assert any(f"is on file://{tmp_path}/bucket?X-Amz-Signature=***" in line for line in lines), lines
    assert secret not in "\n".join(lines)

    def refused(path, *args, **kwargs):
        raise PermissionError(f"[Errno 13] Permission denied: '{path}'")

    monkeypatch.setattr(mirror.fs, "pipe_file", refused)  # fsspec shares the instance: undone after the test
    with pytest.raises(MirrorError) as caught:
        mirror.check_writable()
    assert "X-Amz-Signature=***" in str(caught.value) and "Permission denied" in str(caught.value)
    assert secret not in str(caught.value) and secret in str(caught.value.__cause__)


def test_a_mirrored_run_keeps_its_credentials_in_the_process(codes_dir, tmp_path, tmp_path_factory, capfd):
    """One tiny run mirrored to fsspec's memory filesystem through a URL with a user and password (which that
    filesystem takes as part of its path, so the real URL reaches a real filesystem): no file of the run, no
    printed line, no file `push` would upload and no report page holds the password."""
    secret = f"s3cr3t{uuid.uuid4().hex}"
    bucket = f"bucket-{uuid.uuid4().hex}"
    cfg = tiny(
        codes_dir,
        tmp_path / "run",
        "train.max_steps=2",
        "train.save_every=1",
        "eval.eval_every=1",
        "train.report_to=tensorboard",
        f"output.mirror=memory://user:{secret}@{bucket}/run",
    )
    assert secret in cfg.output.mirror
    train(cfg)
    printed = capfd.readouterr()
    run = Path(cfg.output.dir)

    # The real URL reached the filesystem: the mirror holds the export under the path with the password.
    from fsspec.implementations.memory import MemoryFileSystem

    assert MemoryFileSystem().isfile(f"/user:{secret}@{bucket}/run/final/config.yaml")
    assert f"mirror: final (step 2) is on memory://***@{bucket}/run" in printed.out, printed.out
    assert secret not in printed.out + printed.err
    assert (run / "best").is_dir() and (run / "checkpoints/step_1/config.yaml").is_file()
    assert list((run / "logs").rglob("events.out.tfevents.*"))
    assert files_holding(run, secret) == []
    assert files_holding(run, f"memory://***@{bucket}/run") != []  # the search sees the configs and event files
    assert read_saved(run / "config.yaml").output.mirror == f"memory://***@{bucket}/run"

    out = publish.upload_folder(run / "final", tmp_path / "repo", "me/model")
    base = str(tmp_path_factory.getbasetemp())
    assert base in (run / "final/config.yaml").read_text() and (run / "final/.dia_tpu.json").is_file()
    for text in (secret, str(run.resolve()), base):
        assert files_holding(out, text) == [], text
    assert not (out / ".dia_tpu.json").exists()
    public = read_saved(out / "config.yaml")
    assert (public.output.dir, public.data.dataset, public.output.mirror) == (
        "run",
        codes_dir.name,
        f"memory://***@{bucket}/run",
    )
    processor = json.loads((out / "processor_config.json").read_text())
    assert processor["audio_tokenizer"]["audio_tokenizer_name_or_path"] == "codec"

    page = render(run)
    assert f"memory://***@{bucket}/run" in page and secret not in page


def test_push_names_local_folders_by_their_names(tmp_path):
    cfg = load(
        None,
        [
            "model.pretrained=/models/dia-base",
            "data.dataset=/data/codes",
            "data.source=~/clips",
            "eval.audio.asr=whisper:/models/whisper",
            "eval.audio.speaker=xvector:org/speaker",
            "train.resume=auto",
            "output.dir=relative/run",
            "output.mirror=gs://bucket/run?token=abc",
            "samples.prompts=[{name: a, text: hi, audio: /clips/a.wav, transcript: hi}]",
        ],
    )
    assert cfg.output.dir == str(Path.cwd() / "relative/run")
    public = public_config(cfg)
    keys = [
        ("model", "pretrained"),
        ("model", "codec"),
        ("data", "dataset"),
        ("data", "source"),
        ("train", "resume"),
        ("output", "dir"),
        ("output", "mirror"),
    ]
    shown = {key: public[section][key] for section, key in keys}
    assert shown == {
        "pretrained": "dia-base",
        "codec": "descript/dac_44khz",
        "dataset": "codes",
        "source": "clips",
        "resume": "auto",
        "dir": "run",
        "mirror": "gs://bucket/run?token=***",
    }
    audio = public["eval"]["audio"]
    assert (audio["asr"], audio["speaker"]) == ("whisper:whisper", "xvector:org/speaker")
    assert public["samples"]["prompts"][0]["audio"] == "a.wav"

    card = publish.model_card(
        dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, dataset=str(tmp_path))),
        RunFolder(tmp_path),
        "me/model",
        adapter=True,
        samples=[],
        license="mit",
    )
    assert "A LoRA adapter for `dia-base`" in card and "/models/" not in card

    (tmp_path / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/models/dia-base"}))
    publish._point_adapter_at_base(tmp_path)
    assert json.loads((tmp_path / "adapter_config.json").read_text())["base_model_name_or_path"] == "dia-base"


@pytest.mark.parametrize("broken", [False, True])
def test_the_report_redacts_a_config_saved_before_saves_were_redacted(tmp_path, broken):
    url = "s3://KEY:SECRETVALUE@bucket/run"
    cfg = load(ROOT / "configs/demo.yaml", [f"output.mirror={url}"])
    # As saves wrote it before they redacted; broken, it is redacted line by line.
    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False) + (": : [not yaml\n" if broken else "")
    (tmp_path / "config.yaml").write_text(text)
    assert "SECRETVALUE" in (tmp_path / "config.yaml").read_text()
    page = render(tmp_path)
    assert "s3://***@bucket/run" in page and "SECRETVALUE" not in page
    assert (": : [not yaml" in page) == broken  # the text shown as it is, but for the URL


def files_holding(folder: Path, text: str) -> list[str]:
    """Every file under `folder` whose bytes contain `text`, weights and event files included."""
    needle = text.encode()
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and needle in p.read_bytes())
