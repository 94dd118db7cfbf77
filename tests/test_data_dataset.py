"""A tiny LRS3-style corpus through AVDataset, the collator and the DataLoader; bad inputs."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from llama_avsr import media
from llama_avsr.data.batch import PAD_LABEL, Batch
from llama_avsr.data.collate import Collator
from llama_avsr.data.config import DataConfig
from llama_avsr.data.corpus import Utterance, read_labels, utterance_from_file
from llama_avsr.data.dataset import (
    AVDataset,
    BatchWithSkips,
    SkipBadItems,
    SkippedItem,
    build_dataloader,
    cut_or_pad,
    load_split,
)
from llama_avsr.data.transforms import VIDEO_MEAN, VIDEO_STD, build_transforms

DS = "lrs3_video_seg16s"


class CharTokenizer:
    """Stand-in for an HF tokenizer: one id per character."""

    eos_token_id = 2

    def __call__(self, texts: list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        return {"input_ids": [[3 + (ord(c) % 50) for c in t] for t in texts]}


def tone(n: int, sr: int = 16000, f: float = 220.0) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * f * np.arange(n) / sr)).astype(np.float32)


def mouth(t: int, size: int = 96, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 200, (1, size, size))
    return np.clip(base + rng.integers(-10, 10, (t, size, size)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/lrs3_video_seg16s/... + root/labels/{test,bad}.csv

    00002: 85 frames, wav at 16 kHz exactly as long          (the published example line)
    00003: 40 frames, wav at 44.1 kHz, 1.5 s (longer: cut)
    00004: 30 frames, no wav, audio track in the mp4
    00005: 50 frames, wav 0.5 s (shorter: padded)
    """
    root = tmp_path_factory.mktemp("corpus")
    d = root / DS / "test/0Fi83BHQsMA"
    media.write_video(d / "00002.mp4", mouth(85))
    media.write_wav(d / "00002.wav", tone(85 * 640))
    media.write_video(d / "00003.mp4", mouth(40, seed=1))
    media.write_wav(d / "00003.wav", tone(int(1.5 * 44100), 44100), sample_rate=44100)
    media.write_video(d / "00004.mp4", mouth(30, seed=2), audio=tone(30 * 640))
    media.write_video(d / "00005.mp4", mouth(50, seed=3))
    media.write_wav(d / "00005.wav", tone(8000))
    (root / "labels").mkdir()
    (root / "labels/test.csv").write_text(
        f"{DS},test/0Fi83BHQsMA/00002.mp4,85,1 2 3,some words here\n"
        f"{DS},test/0Fi83BHQsMA/00003.mp4,40,4 5,resampled audio\n"
        f"{DS},test/0Fi83BHQsMA/00004.mp4,30,6,audio from the video\n"
        f"{DS},test/0Fi83BHQsMA/00005.mp4,50,7 8,short wav\n"
    )
    # bad items
    b = root / DS / "bad"
    b.mkdir(parents=True)
    (b / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(5000))
    (b / "corrupt.wav").write_bytes(b"RIFF" + np.random.default_rng(1).bytes(3000))
    (b / "empty.mp4").write_bytes(b"")
    media.write_video(b / "silent.mp4", mouth(20))  # no audio track, no wav
    media.write_video(b / "small.mp4", mouth(20, size=64))  # smaller than the 88 crop
    media.write_wav(b / "small.wav", tone(20 * 640))
    return root


def utts(corpus: Path, csv: str = "test.csv") -> list[Utterance]:
    u, problems = read_labels(corpus / "labels" / csv, corpus)
    assert problems == []
    return u


def test_round_trip_avsr(corpus: Path) -> None:
    ds = AVDataset(
        utts(corpus), ["video", "audio"], build_transforms("test", ["audio", "video"], DataConfig())
    )
    samples = [ds[i] for i in range(len(ds))]
    for s, n in zip(samples, (85, 40, 30, 50), strict=True):
        assert set(s) == {"id", "text", "audio", "video"}
        assert s["video"].shape == (n, 1, 88, 88) and s["video"].dtype == torch.float32
        assert s["audio"].shape == (n * 640,) and s["audio"].dtype == torch.float32  # cut / padded
    assert samples[0]["id"] == f"{DS}/test/0Fi83BHQsMA/00002" and samples[0]["text"] == "some words here"
    batch = SkipBadItems(Collator(CharTokenizer(), ["audio", "video"]))(samples)
    assert isinstance(batch, Batch) and batch.skipped == []
    assert batch.inputs["audio"].shape == (4, 85 * 640)
    assert batch.inputs["video"].shape == (4, 85, 1, 88, 88)
    assert batch.lengths["video"].tolist() == [85, 40, 30, 50]
    assert batch.lengths["audio"].tolist() == [85 * 640, 40 * 640, 30 * 640, 50 * 640]
    assert batch.target_ids.shape == (4, len("audio from the video") + 1)
    assert batch.target_ids[0, len("some words here")] == CharTokenizer.eos_token_id
    assert batch.target_ids[0, -1] == PAD_LABEL


def test_video_values(corpus: Path) -> None:
    u = utts(corpus)[0]
    s = AVDataset([u], ["video"])[0]
    assert set(s) == {"id", "text", "video"}
    frames, _ = media.read_video(u.video, gray=True)
    expect = (torch.from_numpy(frames[:, 4:92, 4:92]).float() / 255 - VIDEO_MEAN) / VIDEO_STD
    torch.testing.assert_close(s["video"][:, 0], expect)


def test_audio_only_sources(corpus: Path) -> None:
    raw = {"audio": lambda x, g: x}  # no layer norm: compare with the written signal
    ds = AVDataset(utts(corpus), ["audio"], raw)
    a2, a3, a4, a5 = (ds[i]["audio"] for i in range(4))
    assert a2.shape == (85 * 640,)
    np.testing.assert_allclose(a2.numpy(), tone(85 * 640), atol=1e-4)
    assert a3.shape == (24000,)  # 1.5 s at 44.1 kHz → 16 kHz
    np.testing.assert_allclose(a3[1000:-1000].numpy(), tone(24000)[1000:-1000], atol=2e-3)
    # from the mp4's AAC track: about the video's duration (encoder priming may add a little)
    assert abs(a4.shape[0] - 30 * 640) <= 2048 and float(a4.abs().max()) > 0.1
    assert a5.shape == (8000,)  # audio alone is not padded to the video


def test_cut_or_pad() -> None:
    x = torch.arange(5.0)
    assert cut_or_pad(x, 3).tolist() == [0, 1, 2]
    assert cut_or_pad(x, 7).tolist() == [0, 1, 2, 3, 4, 0, 0]
    assert cut_or_pad(torch.ones(2, 3), 4).shape == (4, 3)


def test_user_file_inference(corpus: Path) -> None:
    u = utterance_from_file(corpus / DS / "test/0Fi83BHQsMA/00004.mp4")
    assert u.n_frames == 30
    s = AVDataset([u], ["audio", "video"])[0]
    assert s["video"].shape == (30, 1, 88, 88) and s["audio"].shape == (30 * 640,)


BAD = [
    ("corrupt.mp4", ["video"], "corrupt.mp4"),
    ("empty.mp4", ["video"], "empty.mp4: file is empty"),
    ("silent.mp4", ["audio"], "silent.mp4: no audio track"),
    ("missing.mp4", ["video"], "missing.mp4: file not found"),
    ("corrupt.mp4", ["audio"], "corrupt.wav"),  # wav beside it is corrupt
    ("small.mp4", ["video"], "small.mp4: video transform failed"),
]


@pytest.mark.parametrize(("name", "mods", "message"), BAD)
def test_bad_item_skipped_or_raised(
    corpus: Path, caplog: pytest.LogCaptureFixture, name: str, mods: list[str], message: str
) -> None:
    good = utts(corpus)[1]
    bad = Utterance(
        f"bad/{name}", corpus / DS / "bad" / name, corpus / DS / "bad" / name.replace(".mp4", ".wav"), 20
    )
    ds = AVDataset([good, bad], mods)
    with caplog.at_level(logging.WARNING):
        item = ds[1]
    assert isinstance(item, SkippedItem) and item.id == f"bad/{name}"
    assert message in item.reason
    assert message in caplog.text and f"bad/{name}" in caplog.text
    batch = SkipBadItems(Collator(CharTokenizer(), mods))([ds[0], item, None])
    assert batch.ids == [good.id] and batch.skipped == [f"bad/{name}", "<unknown>"]
    with pytest.raises(media.MediaError, match=message):
        AVDataset([bad], mods, on_error="raise")[0]


def test_silent_mp4_error_names_missing_wav(corpus: Path) -> None:
    p = corpus / DS / "bad/silent.mp4"
    item = AVDataset([Utterance("s", p, p.with_suffix(".wav"), 20)], ["audio"])[0]
    assert isinstance(item, SkippedItem)
    assert "silent.wav does not exist" in item.reason and "silent.mp4: no audio track" in item.reason


def test_all_bad_batch_is_empty(corpus: Path) -> None:
    batch = SkipBadItems(Collator(CharTokenizer(), ["video"]))([SkippedItem("a", "x"), SkippedItem("b", "y")])
    assert len(batch) == 0 and batch.skipped == ["a", "b"] and batch.inputs == {}
    moved = batch.to("cpu")
    assert isinstance(moved, BatchWithSkips) and moved.skipped == ["a", "b"]


def write_bad_csv(corpus: Path) -> Path:
    csv = corpus / "labels/mixed.csv"
    lines = (corpus / "labels/test.csv").read_bytes()
    csv.write_bytes(
        lines
        + f"{DS},bad/corrupt.mp4,20,1,corrupt file\n{DS},bad/empty.mp4,20,1,empty file\n".encode()
        + f"{DS},bad/missing.mp4,20,1,missing file\n{DS},bad/small.mp4,20,1,small frames\n".encode()
        + f"{DS},bad/silent.mp4,20,1,no audio track\n".encode()
        + b"lrs3,x.mp4,12,1,caf\xe9\n"  # non-UTF-8: skipped at read time
        + b"lrs3,y.mp4,twelve,1,malformed\n"
    )
    return csv


def test_dataloader_counts_skips(corpus: Path) -> None:
    csv = write_bad_csv(corpus)
    utterances, problems = read_labels(csv, corpus)
    assert [p.where for p in problems] == [f"{csv}:10", f"{csv}:11"]
    cfg = DataConfig(root=str(corpus), test_csv="mixed.csv", num_workers=0, max_frames=100)
    loader = build_dataloader(utterances, cfg, Collator(CharTokenizer(), ["audio", "video"]), "test")
    batches = list(loader)
    ids = [i for b in batches for i in b.ids]
    skipped = [i for b in batches for i in b.skipped]
    assert sorted(ids) == sorted(u.id for u in utterances[:4])
    assert sorted(skipped) == sorted(
        f"{DS}/bad/{n}" for n in ("corrupt", "empty", "missing", "small", "silent")
    )
    with pytest.raises(Exception, match="labels/mixed.csv:10: not valid UTF-8"):
        load_split(DataConfig(root=str(corpus), test_csv="mixed.csv", on_error="raise"), "test")
    assert len(load_split(DataConfig(root=str(corpus), test_csv="mixed.csv"), "test")) == 9


def test_dataloader_workers_train_reproducible(corpus: Path) -> None:
    noise = corpus / "noise.wav"
    media.write_wav(noise, np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1)
    csv = write_bad_csv(corpus)
    utterances, _ = read_labels(csv, corpus)
    cfg = DataConfig(root=str(corpus), num_workers=2, max_frames=100, noise_file=str(noise), seed=4)
    collator = Collator(CharTokenizer(), ["audio", "video"])

    def run(c: DataConfig, epoch: int = 0) -> list[BatchWithSkips]:
        return list(build_dataloader(utterances, c, collator, "train", epoch=epoch))

    a, b = run(cfg), run(cfg)
    assert [x.ids for x in a] == [x.ids for x in b]
    for x, y in zip(a, b, strict=True):
        assert isinstance(x, BatchWithSkips)
        for m in x.inputs:
            torch.testing.assert_close(x.inputs[m], y.inputs[m])  # same augmentation
    assert sum(len(x.skipped) for x in a) == 5  # counted in the workers, reported in the main process
    assert sorted(i for x in a for i in x.ids) == sorted(u.id for u in utterances[:4])
    for x in a:
        if len(x):
            assert sum(x.lengths["video"].tolist()) <= 100
    c = run(cfg, epoch=1)
    assert [x.ids for x in c] != [x.ids for x in a] or any(
        not torch.equal(x.inputs["audio"], y.inputs["audio"]) for x, y in zip(a, c, strict=True) if len(x)
    )


def test_training_augmentation_is_per_item_the_same_for_any_number_of_workers(corpus: Path) -> None:
    """Each training item draws its augmentation and noise from (seed, epoch, item): 0 or 2 workers,
    and a loader resumed mid-epoch, give the same batches (an exact resume needs nothing else)."""
    noise = corpus / "noise.wav"
    media.write_wav(noise, np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1)
    utterances = utts(corpus)
    collator = Collator(CharTokenizer(), ["audio", "video"])

    def run(workers: int, skip: int = 0) -> list[BatchWithSkips]:
        cfg = DataConfig(num_workers=workers, max_frames=60, noise_file=str(noise), seed=4, train_snrs=[0])
        loader = build_dataloader(utterances, cfg, collator, "train", epoch=1)
        loader.batch_sampler.load_state_dict({"epoch": 1, "global_consumed": skip})
        return list(loader)

    alone, pooled, resumed = run(0), run(2), run(0, skip=1)
    assert len(alone) >= 2
    for x, y in zip(alone, pooled, strict=True):
        assert x.ids == y.ids
        for m in x.inputs:
            assert torch.equal(x.inputs[m], y.inputs[m])
    for x, y in zip(alone[1:], resumed, strict=True):
        assert x.ids == y.ids and all(torch.equal(x.inputs[m], y.inputs[m]) for m in x.inputs)


def test_dataloader_distributed_split(corpus: Path) -> None:
    utterances = utts(corpus)
    cfg = DataConfig(num_workers=0, max_frames=60, max_batch_size=1)
    collator = Collator(CharTokenizer(), ["video"])
    per_rank = [
        [b.ids for b in build_dataloader(utterances, cfg, collator, "val", rank=r, world_size=2)]
        for r in range(2)
    ]
    assert len(per_rank[0]) == len(per_rank[1]) == 2
    assert sorted(i for r in per_rank for b in r for i in b) == sorted(u.id for u in utterances)


def test_generator_differs_per_worker_and_dataset_pickles(corpus: Path) -> None:
    import pickle

    ds = AVDataset(utts(corpus), ["video"], seed=1)
    g = ds.generator()
    assert ds.generator() is g
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._gen is None
    assert torch.equal(
        clone.generator().get_state(), AVDataset(utts(corpus), ["video"], seed=1).generator().get_state()
    )


def test_bad_arguments(corpus: Path) -> None:
    with pytest.raises(ValueError, match="modalities"):
        AVDataset([], ["text"])
    with pytest.raises(ValueError, match="on_error"):
        AVDataset([], ["audio"], on_error="ignore")
    with pytest.raises(ValueError, match="no transform"):
        AVDataset([], ["audio", "video"], {"audio": lambda x, g: x})


def test_modality_dropout_blanks_one_modality_per_item(corpus: Path) -> None:
    """Training items lose at most one modality, at the configured rates; the blanked input is the
    evaluation blank (zeros of the same shape) and the other modality is untouched."""
    items = utts(corpus)[:2]
    clean = AVDataset(items, ["audio", "video"])
    dropped = AVDataset(
        items * 100, ["audio", "video"], modality_dropout={"audio": 0.3, "video": 0.5}, seed=3
    )
    counts = {"audio": 0, "video": 0}
    for i in range(len(dropped)):
        s, ref = dropped[i], clean[i % 2]
        assert len(s.get("blanked", [])) <= 1
        for m in ("audio", "video"):
            assert s[m].shape == ref[m].shape
            if m in s.get("blanked", []):
                counts[m] += 1
                assert torch.count_nonzero(s[m]) == 0
            else:
                assert torch.equal(s[m], ref[m])
    assert 40 <= counts["audio"] <= 80 and 80 <= counts["video"] <= 120, counts  # 60 and 100 expected
    # a single-modality dataset never blanks its only input
    video_only = AVDataset(items * 20, ["video"], modality_dropout={"audio": 0.5, "video": 0.4})
    assert all("blanked" not in video_only[i] for i in range(len(video_only)))


def test_modality_dropout_in_training_only_and_blanking_at_eval(corpus: Path) -> None:
    cfg = DataConfig(
        root=str(corpus), test_csv="test.csv", train_csv="test.csv", max_frames=1000, num_workers=0,
        modality_dropout={"video": 0.9}, blank_modalities=["audio"], train_augment=[],
    )  # fmt: skip
    collator = Collator(CharTokenizer(), ["audio", "video"])
    items = utts(corpus)
    test = [b for b in build_dataloader(items, cfg, collator, "test")]
    assert all(torch.count_nonzero(b.inputs["audio"]) == 0 for b in test)
    assert all(torch.count_nonzero(b.inputs["video"]) > 0 for b in test)
    train = [b for b in build_dataloader(items * 5, cfg, collator, "train")]
    assert all(torch.count_nonzero(b.inputs["audio"]) > 0 for b in train)
    blank_videos = sum(int((b.inputs["video"].flatten(1).abs().sum(1) == 0).sum()) for b in train)
    assert blank_videos >= 12  # of 20 items at p = 0.9
    with pytest.raises(ValueError, match="modality_dropout"):
        DataConfig(modality_dropout={"audio": 0.6, "video": 0.5})
    with pytest.raises(ValueError, match="blank_modalities"):
        DataConfig(blank_modalities=["text"])


@pytest.fixture
def decoded_videos():
    """The process's decoded-video cache, empty before and after the test."""
    from llama_avsr.data.dataset import DECODED_VIDEOS

    DECODED_VIDEOS.clear()
    yield DECODED_VIDEOS
    DECODED_VIDEOS.clear()


def test_video_cache_decodes_each_item_once_and_changes_no_result(
    corpus: Path, monkeypatch, decoded_videos
) -> None:
    """``data.video_cache_mb``: over two training epochs each video is decoded once; the batches equal
    those of a loader that decodes every time (augmentation included), and the cached frames are still
    the decoded ones afterwards (no transform wrote into them)."""
    decoded: list[str] = []
    read = AVDataset.read_video

    def counting(utt: Utterance) -> torch.Tensor:
        decoded.append(utt.id)
        return read(utt)

    monkeypatch.setattr(AVDataset, "read_video", staticmethod(counting))
    utterances = utts(corpus)
    collator = Collator(CharTokenizer(), ["video"])

    def epochs(cache_mb: int) -> list[BatchWithSkips]:
        cfg = DataConfig(num_workers=0, max_frames=120, seed=4, video_cache_mb=cache_mb)
        loader = build_dataloader(utterances, cfg, collator, "train", modalities=["video"])
        out = []
        for epoch in (0, 1):
            loader.batch_sampler.set_epoch(epoch)
            out += list(loader)
        return out, loader.dataset

    plain, _ = epochs(0)
    assert len(decoded) == 2 * len(utterances)
    decoded.clear()
    cached, ds = epochs(64)
    assert sorted(decoded) == sorted(u.id for u in utterances)  # once each
    for x, y in zip(plain, cached, strict=True):
        assert x.ids == y.ids and torch.equal(x.inputs["video"], y.inputs["video"])
    assert len(decoded_videos) == len(utterances)
    for u in utterances:
        assert torch.equal(decoded_videos.get(decoded_videos.key(u.video)), read(u))


def test_video_cache_keeps_to_its_budget(corpus: Path, decoded_videos) -> None:
    utterances = utts(corpus)
    one = AVDataset.read_video(utterances[0])
    budget = one.numel() + 10  # room for the first video only
    ds = AVDataset(utterances, ["video"], video_cache_bytes=budget)
    for i in range(len(ds)):
        ds[i]
    assert len(decoded_videos) == 1 and decoded_videos.bytes <= budget
    assert decoded_videos.get(decoded_videos.key(utterances[0].video)) is not None
    decoded_videos.clear()
    for i in range(len(ds)):
        AVDataset(utterances, ["video"])[i]  # no budget: nothing kept
    assert len(decoded_videos) == 0
    with pytest.raises(ValueError, match="video_cache_mb"):
        DataConfig(video_cache_mb=-1)


def test_decoded_videos_serve_every_later_loader_and_its_forked_worker(
    corpus: Path, monkeypatch, decoded_videos
) -> None:
    """The decoded frames are the process's: a later loader (a training run's next warm-up pass, its
    training loader, a second run in the same process) decodes nothing — nor does its worker process,
    forked after the cache was filled — and reads the same frames; a rewritten file is decoded again."""
    utterances = utts(corpus)
    collator = Collator(CharTokenizer(), ["video"])
    first = build_dataloader(
        utterances, DataConfig(num_workers=0, max_frames=120, video_cache_mb=64), collator, "val"
    )
    before = list(first)
    assert len(decoded_videos) == len(utterances)

    def no_decoding(utt: Utterance) -> torch.Tensor:
        raise media.MediaError(f"{utt.video} decoded again")

    monkeypatch.setattr(AVDataset, "read_video", staticmethod(no_decoding))
    import torch.multiprocessing as mp

    forked = (mp.get_start_method(allow_none=True) or mp.get_all_start_methods()[0]) == "fork"
    for workers in (0, 1) if forked else (0,):  # a spawned worker starts with an empty cache
        cfg = DataConfig(num_workers=workers, max_frames=120, video_cache_mb=64)
        again = list(build_dataloader(utterances, cfg, collator, "val"))
        assert not any(b.skipped for b in again)  # a decode would have failed the item
        for x, y in zip(before, again, strict=True):
            assert x.ids == y.ids and torch.equal(x.inputs["video"], y.inputs["video"])
    # a file written again (new modification time) is not served from the cache
    path = Path(utterances[0].video)
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    ds = AVDataset(utterances, ["video"], video_cache_bytes=64 << 20)
    with pytest.raises(media.MediaError, match="decoded again"):
        ds.load(0)


def test_augment_variants_repeat_a_modality_every_k_epochs_and_leave_the_others_fresh(corpus: Path) -> None:
    """``data.augment_variants: {audio: 2}``: an item's noisy audio is one of two fixed variants (epoch
    0 = epoch 2 ≠ epoch 1), the same from the loader with any number of workers; its video still gets a
    new random crop every epoch."""
    noise = corpus / "noise.wav"
    media.write_wav(noise, np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1)
    utterances = utts(corpus)
    cfg = DataConfig(
        noise_file=str(noise), train_snrs=[0], augment_variants={"audio": 2}, num_workers=0, seed=4
    )
    collator = Collator(CharTokenizer(), ["audio", "video"])
    ds = build_dataloader(utterances, cfg, collator, "train").dataset
    clean = AVDataset(utterances, ["audio", "video"])
    for i in range(len(utterances)):
        e0, e1, e2 = (ds[(e, i)] for e in range(3))
        assert torch.equal(e0["audio"], e2["audio"])
        assert not torch.equal(e0["audio"], e1["audio"])
        assert not torch.equal(e0["audio"], clean[i]["audio"])  # noisy, not clean
        assert not torch.equal(e0["video"], e2["video"])  # a fresh crop and time mask
    # through the loader, with workers: the same per-item variant as the dataset gives
    for w in (0, 2):
        loader = build_dataloader(
            utterances, dataclasses.replace(cfg, num_workers=w), collator, "train", epoch=2
        )
        by_id = {
            i: x.inputs["audio"][k, : int(x.lengths["audio"][k])] for x in loader for k, i in enumerate(x.ids)
        }
        assert len(by_id) == len(utterances)
        for i, u in enumerate(utterances):
            assert torch.equal(by_id[u.id], ds[(0, i)]["audio"]), (w, u.id)
    # a plain index draws one of the variants
    plain = ds[0]["audio"]
    assert torch.equal(plain, ds[(0, 0)]["audio"]) or torch.equal(plain, ds[(1, 0)]["audio"])


def test_augment_variants_are_checked() -> None:
    with pytest.raises(ValueError, match="augment_variants.*count >= 1"):
        DataConfig(augment_variants={"audio": 0})
    with pytest.raises(ValueError, match="augment_variants.*video is not augmented"):
        DataConfig(train_augment=["audio"], augment_variants={"video": 3})
    with pytest.raises(ValueError, match="augment_variants: modalities"):
        DataConfig(augment_variants={"speech": 3})
