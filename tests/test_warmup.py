"""CTC warm-up (train.ctc_warmup_epochs / ctc_warmup_streams): by default it fits only the projectors of
frozen-encoder streams, leaves them at the LLM embeddings' norm, is deterministic, runs before training
and not on resume; a trainable stream named in a mapping warms up encoder and projector together."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from llama_avsr.cli import main
from llama_avsr.synth import tts

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny_avsr.yaml"

pytestmark = pytest.mark.skipif(not tts.available(), reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus")
    args = ["synth", "--out", str(out), "--train", "12", "--val", "2", "--test", "2", "--faces", "0"]
    assert main([*args, "--jobs", "1", "--seed", "3"]) == 0
    return out


def overrides(corpus: Path, out: Path) -> list[str]:
    return [
        f"train.out_dir={out}",
        f"data.root={corpus}",
        "data.train_csv=synth_train.csv",
        "data.test_csv=synth_test.csv",
        "data.val_csv=null",
    ]


def warm_model(corpus: Path, tmp_path: Path, epochs: int = 40):
    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    exp = ExperimentConfig.load(
        TINY, overrides(corpus, tmp_path) + [f"train.ctc_warmup_epochs={epochs}", "train.ctc_warmup_lr=1e-2"]
    )
    torch.manual_seed(0)
    model = AVSRLightning(exp).model
    before = {k: v.clone() for k, v in model.projectors.state_dict().items()}
    report = ctc_warmup(model, exp)
    return model, before, report


def clean_loader(exp, model, modality: str):
    """The training utterances of one modality, unaugmented and in order."""
    from llama_avsr.data.collate import Collator
    from llama_avsr.data.dataset import build_dataloader, load_split

    collator = Collator(model.tokenizer, [modality])
    return build_dataloader(load_split(exp.data, "train"), exp.data, collator, "val", modalities=[modality])


def test_warmup_fits_only_the_frozen_stream_projector_at_the_embedding_norm(corpus, tmp_path):
    from llama_avsr.training.config import ExperimentConfig

    model, before, report = warm_model(corpus, tmp_path)
    # the tiny config's video encoder trains from scratch: only the (frozen) Whisper stream warms up
    assert report.streams == ["audio"] and report.utterances + report.skipped == 12
    assert report.last_loss["audio"] < 0.5 * report.first_loss["audio"]
    after = model.projectors.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("video."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("audio."))
    # projector outputs end at the mean norm of the LLM's token embeddings (of the corpus' tokens)
    exp = ExperimentConfig.load(TINY, overrides(corpus, tmp_path))
    loader = clean_loader(exp, model, "audio")
    emb = model.llm.get_input_embeddings().weight.float()
    used = torch.unique(torch.cat([b.target_ids[b.target_ids >= 0] for b in loader]))
    radius = float(emb[used[used != model.tokenizer.eos_token_id]].norm(dim=-1).mean())
    with torch.no_grad():
        norms = torch.cat(
            [
                model.projectors["audio"](f[i, : int(n[i])]).norm(dim=-1)
                for b in loader
                for f, n in [model.stream_features("audio", b)]
                for i in range(len(b))
            ]
        )
    assert float(norms.mean()) == pytest.approx(radius, rel=0.02)


def test_warmup_is_deterministic(corpus, tmp_path):
    a, _, ra = warm_model(corpus, tmp_path / "a", epochs=3)
    b, _, rb = warm_model(corpus, tmp_path / "b", epochs=3)
    assert ra.last_loss == rb.last_loss
    for (k, v), w in zip(a.projectors.state_dict().items(), b.projectors.state_dict().values(), strict=True):
        assert torch.equal(v, w), k


def test_train_warms_up_first_and_a_resume_does_not(corpus, tmp_path):
    out = tmp_path / "run"
    run = ["--config", str(TINY), *overrides(corpus, out), "train.ctc_warmup_epochs=2"]
    assert main(["train", *run, "train.max_steps=2"]) == 0
    report = json.loads((out / "ctc_warmup.json").read_text())
    assert report["streams"] == ["audio"] and report["last_loss"]["audio"] > 0
    stamp = (out / "ctc_warmup.json").stat().st_mtime_ns
    assert main(["train", "--resume", *run, "train.max_steps=3"]) == 0
    assert (out / "ctc_warmup.json").stat().st_mtime_ns == stamp  # the checkpoint's weights, no new warm-up


def test_unknown_warmup_stream_is_a_clear_error(corpus, tmp_path):
    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    exp = ExperimentConfig.load(
        TINY, overrides(corpus, tmp_path) + ["train.ctc_warmup_epochs=1", "train.ctc_warmup_streams=[lips]"]
    )
    with pytest.raises(ValueError, match="ctc_warmup_streams.*lips"):
        ctc_warmup(AVSRLightning(exp).model, exp)


def test_a_named_trainable_stream_warms_up_encoder_and_projector(corpus, tmp_path):
    """``ctc_warmup_streams`` as a mapping: the from-scratch video encoder learns with its projector
    (the frozen audio stream with 0 epochs is left alone), ending at the embeddings' norm."""
    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    exp = ExperimentConfig.load(
        TINY,
        overrides(corpus, tmp_path)
        + [
            "train.ctc_warmup_streams={audio: 0, video: 6}",
            "train.ctc_warmup_lr=1e-2",
            "data.train_augment=[]",
        ],
    )
    assert exp.train.ctc_warmup
    torch.manual_seed(0)
    model = AVSRLightning(exp).model
    enc = model.encoders["avhubert"]
    before_enc = {k: v.clone() for k, v in enc.state_dict().items()}
    before = {k: v.clone() for k, v in model.projectors.state_dict().items()}
    report = ctc_warmup(model, exp)
    assert report.streams == ["video"] and report.epochs == {"video": 6.0}
    assert report.last_loss["video"] < 0.7 * report.first_loss["video"]
    assert 0.0 <= report.token_error_rate["video"] <= 1.0
    after = model.projectors.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("audio."))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("video."))
    trained = [k for k, p in enc.named_parameters() if p.requires_grad]
    assert trained and any(not torch.equal(before_enc[k], enc.state_dict()[k]) for k in trained)
    # video tokens end at the LLM embeddings' norm, like the frozen streams' after their warm-up
    assert_video_tokens_at_embedding_norm(exp, model)


def test_warmup_mapping_needs_non_negative_epochs(corpus, tmp_path):
    from llama_avsr.training.config import ExperimentConfig

    with pytest.raises(ValueError, match="ctc_warmup_streams"):
        ExperimentConfig.load(TINY, overrides(corpus, tmp_path) + ["train.ctc_warmup_streams={video: -1}"])


def test_encoder_rate_warmup_trains_the_encoder_then_fits_the_projector(corpus, tmp_path):
    """``train.ctc_warmup_rate=encoder``: the trainable encoder learns at its own frame rate through a
    temporary head (reported as ``video.encoder``), then the projector is fitted on its features and ends
    at the embeddings' norm; the encoder's weights change, the head leaves no parameter behind."""
    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    exp = ExperimentConfig.load(
        TINY,
        overrides(corpus, tmp_path)
        + [
            "train.ctc_warmup_streams={audio: 0, video: 6}",
            "train.ctc_warmup_rate=encoder",
            "train.ctc_warmup_epochs=20",
            "train.ctc_warmup_lr=1e-2",
            "data.train_augment=[]",
            "data.modality_dropout={video: 0.5}",  # the warm-up must see every video anyway
        ],
    )
    torch.manual_seed(0)
    model = AVSRLightning(exp).model
    n_params = sum(p.numel() for p in model.parameters())
    enc = model.encoders["avhubert"]
    before_enc = {k: v.clone() for k, v in enc.state_dict().items()}
    report = ctc_warmup(model, exp)
    assert set(report.last_loss) == {"video.encoder", "video"}
    assert report.last_loss["video.encoder"] < 0.7 * report.first_loss["video.encoder"]
    assert report.last_loss["video"] < report.first_loss["video"]
    assert any(not torch.equal(before_enc[k], v) for k, v in enc.state_dict().items())
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert_video_tokens_at_embedding_norm(exp, model)


def assert_video_tokens_at_embedding_norm(exp, model) -> None:
    """Video tokens end at the LLM embeddings' mean norm, like the frozen streams' after their warm-up."""
    radius = float(model.llm.get_input_embeddings().weight.float().norm(dim=-1).mean())
    model.eval()
    with torch.no_grad():
        b = next(iter(clean_loader(exp, model, "video")))
        f, n = model.stream_features("video", b)
        norms = model.projectors["video"](f[0, : int(n[0])]).norm(dim=-1)
    assert float(norms.mean()) == pytest.approx(radius, rel=0.3)


def encoder_rate_exp(corpus: Path, tmp_path: Path, *settings: str):
    """The tiny recipe with the video encoder warmed up at its own frame rate on clean inputs."""
    from llama_avsr.training.config import ExperimentConfig

    return ExperimentConfig.load(
        TINY,
        overrides(corpus, tmp_path)
        + ["train.ctc_warmup_rate=encoder", "train.ctc_warmup_lr=1e-2", "data.train_augment=[]", *settings],
    )


def teacher_exp(corpus: Path, tmp_path: Path, *extra: str):
    return encoder_rate_exp(
        corpus,
        tmp_path,
        "train.ctc_warmup_streams={audio: 0, video: 3}",
        "train.ctc_warmup_epochs=2",
        "train.warmup_teachers={video: audio}",
        *extra,
    )


def test_video_encoder_learns_to_predict_the_audio_encoders_features(corpus, tmp_path):
    """``train.warmup_teachers={video: audio}``: besides CTC, the from-scratch video encoder learns to
    predict the frozen audio encoder's (standardised) features at each of its frames: the error falls, the
    encoder ends elsewhere than with CTC alone (weight 0), the teacher's encoder is untouched and no head
    is left behind. (That it helps lip reading is measured, not tested: lipconv.py's docstring.)"""
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    encoders = {}
    for weight in (1.0, 0.0):
        exp = teacher_exp(corpus, tmp_path, f"train.warmup_teacher_weight={weight}")
        torch.manual_seed(0)
        model = AVSRLightning(exp).model
        n_params = sum(p.numel() for p in model.parameters())
        audio_before = {k: v.clone() for k, v in model.encoders["whisper"].state_dict().items()}
        report = ctc_warmup(model, exp)
        assert {"video.teacher", "video.encoder", "video"} <= set(report.last_loss)
        assert all(torch.equal(v, model.encoders["whisper"].state_dict()[k]) for k, v in audio_before.items())
        assert sum(p.numel() for p in model.parameters()) == n_params
        encoders[weight] = model.encoders["avhubert"].state_dict()
        if weight:
            assert report.last_loss["video.teacher"] < report.first_loss["video.teacher"]
    assert any(not torch.equal(encoders[1.0][k], encoders[0.0][k]) for k in encoders[1.0])


def test_teacher_targets_average_the_teacher_frames_of_each_student_frame(corpus, tmp_path):
    """Whisper runs at 50 Hz and the video at 25 Hz: each video frame's target is the mean of the two audio
    frames of its 40 ms (before standardisation), and only frames the audio covers have a target."""
    from llama_avsr.data.collate import Collator
    from llama_avsr.data.dataset import build_dataloader, load_split
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import _Teacher

    exp = teacher_exp(corpus, tmp_path)
    model = AVSRLightning(exp).model
    enc = model.encoders["avhubert"]
    teacher = _Teacher(model, "audio", enc.output_dim, enc.frame_rate)
    assert teacher.ratio == 2.0
    collator = Collator(model.tokenizer, ["video", "audio"])
    loader = build_dataloader(
        load_split(exp.data, "train"), exp.data, collator, "val", modalities=["video", "audio"]
    )
    batch = next(iter(loader))
    v_lens = batch.lengths["video"]
    target, mask = teacher.targets(batch, v_lens)
    feats, a_lens = model.encoder_features("audio", batch)
    mean, std = teacher.sum / teacher.count, None
    var = teacher.sumsq / teacher.count - mean.square()
    std = var.clamp(min=1e-8).sqrt()
    for i in range(len(v_lens)):
        frames = int(mask[i].sum())
        assert frames == min(int(v_lens[i]), int(a_lens[i]) // 2)
        pairs = feats[i, : 2 * frames].double().view(frames, 2, -1).mean(1)
        expected = (pairs - mean) / std
        assert torch.allclose(target[i, :frames].double(), expected, atol=1e-4)
        assert not target[i, frames:].any()


def test_teacher_settings_are_checked(corpus, tmp_path):
    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    with pytest.raises(ValueError, match="ctc_warmup_rate: encoder"):
        ExperimentConfig.load(TINY, overrides(corpus, tmp_path) + ["train.warmup_teachers={video: audio}"])
    with pytest.raises(ValueError, match="warmup_teacher_weight"):
        teacher_exp(corpus, tmp_path, "train.warmup_teacher_weight=-1")
    exp = teacher_exp(corpus, tmp_path, "train.warmup_teachers={video: lips}")
    with pytest.raises(ValueError, match="teacher must be another stream"):
        ctc_warmup(AVSRLightning(exp).model, exp)


def token_teacher_exp(corpus: Path, tmp_path: Path, *extra: str):
    return encoder_rate_exp(
        corpus,
        tmp_path,
        "train.ctc_warmup_streams={audio: 4, video: 2}",
        "train.ctc_warmup_epochs=40",
        "train.warmup_token_teachers={video: audio}",
        *extra,
    )


def video_audio_token_similarity(exp, model) -> float:
    """Mean cosine similarity of each video token with the audio token of the same instant (the tiny
    recipe gives both streams 12.5 tokens a second) over the clean training utterances."""
    from llama_avsr.data.collate import Collator
    from llama_avsr.data.dataset import build_dataloader, load_split

    model.eval()
    sims = []
    collator = Collator(model.tokenizer, ["audio", "video"])
    loader = build_dataloader(
        load_split(exp.data, "train"), exp.data, collator, "val", modalities=["audio", "video"]
    )
    with torch.no_grad():
        for batch in loader:
            tokens = {}
            for name in ("audio", "video"):
                f, n = model.stream_features(name, batch)
                tokens[name] = [model.projectors[name](f[i, : int(n[i])]) for i in range(len(batch))]
            for a, v in zip(tokens["audio"], tokens["video"], strict=True):
                k = min(len(a), len(v))
                sims.append(torch.nn.functional.cosine_similarity(a[:k], v[:k], dim=-1).mean())
    return float(torch.stack(sims).mean())


def test_video_projector_learns_to_point_at_the_audio_tokens_of_the_same_instant(corpus, tmp_path):
    """``train.warmup_token_teachers={video: audio}``: after the encoder-rate warm-up, the video projector
    learns besides CTC to put each token where the warmed-up audio projector puts the token of the same
    instant: the cosine distance falls, the video tokens end closer to the audio tokens than with the
    teacher's weight at 0, at the embeddings' norm; the audio stream is untouched and nothing is added."""
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    similarity, audio = {}, {}
    for weight in (1.0, 0.0):
        exp = token_teacher_exp(corpus, tmp_path, f"train.warmup_token_teacher_weight={weight}")
        torch.manual_seed(0)
        model = AVSRLightning(exp).model
        n_params = sum(p.numel() for p in model.parameters())
        report = ctc_warmup(model, exp)
        audio[weight] = model.projectors["audio"].state_dict()
        assert {"audio", "video.encoder", "video"} <= set(report.last_loss)
        assert ("video.tokens" in report.last_loss) == bool(weight)
        assert sum(p.numel() for p in model.parameters()) == n_params
        similarity[weight] = video_audio_token_similarity(exp, model)
        if weight:
            assert report.last_loss["video.tokens"] < 0.8 * report.first_loss["video.tokens"]
            assert_video_tokens_at_embedding_norm(exp, model)
    assert similarity[1.0] > similarity[0.0] + 0.1
    assert all(torch.equal(v, audio[0.0][k]) for k, v in audio[1.0].items())  # the teacher is left alone


def test_teacher_tokens_follow_the_teachers_projector_in_time(corpus, tmp_path):
    """Each student token's target is the teacher's projected token of the same instant: at equal token
    rates the teacher's tokens themselves; student tokens past the teacher's end get none (zeros), and a
    student at half the teacher's rate gets the mean of each pair."""
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import _teacher_tokens

    exp = token_teacher_exp(corpus, tmp_path)
    model = AVSRLightning(exp).model
    gen = torch.Generator().manual_seed(0)
    teacher = [torch.randn(7, model.projector("audio")[0].in_features, generator=gen)]
    expected = model.projector("audio")(teacher[0]).detach()
    same = _teacher_tokens(model, "audio", "video", teacher, [torch.zeros(9, 1)])[0]
    assert torch.allclose(same[:7], expected, atol=1e-5) and not same[7:].any()
    model.cfg.streams["video"].compression.ratio *= 2  # the student now gives half as many tokens
    half = _teacher_tokens(model, "audio", "video", teacher, [torch.zeros(4, 1)])[0]
    assert torch.allclose(half[:3], expected[:6].view(3, 2, -1).mean(1), atol=1e-5) and not half[3:].any()


def test_token_teacher_settings_are_checked(corpus, tmp_path):
    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    with pytest.raises(ValueError, match="warmup_token_teachers needs train.ctc_warmup_rate: encoder"):
        ExperimentConfig.load(
            TINY, overrides(corpus, tmp_path) + ["train.warmup_token_teachers={video: audio}"]
        )
    with pytest.raises(ValueError, match="warmup_token_teacher_weight"):
        token_teacher_exp(corpus, tmp_path, "train.warmup_token_teacher_weight=-1")
    exp = token_teacher_exp(corpus, tmp_path, "train.warmup_token_teachers={video: video}")
    with pytest.raises(ValueError, match="teacher must be another stream"):
        ctc_warmup(AVSRLightning(exp).model, exp)
    exp = token_teacher_exp(
        corpus, tmp_path, "model.encoders.whisper.frozen=false", "train.ctc_warmup_streams={video: 1}"
    )
    with pytest.raises(ValueError, match="teacher stream 'audio' needs a frozen encoder"):
        ctc_warmup(AVSRLightning(exp).model, exp)


def test_forced_alignment_finds_the_frames_where_each_token_is_spoken():
    """Viterbi CTC alignment returns each label's first frame on the best path, keeps a blank between
    repeated labels, and gives nothing when the labels cannot fit; the spans split between onsets."""
    from llama_avsr.training.warmup import ctc_align, span_labels

    path = [0, 0, 3, 3, 0, 5, 0, 5, 5, 0, 2, 0]  # 3 at frame 2, 5 at 5, 5 again at 7, 2 at 10
    lp = torch.full((len(path), 6), -8.0)
    lp[torch.arange(len(path)), torch.tensor(path)] = -0.01
    assert ctc_align(lp.log_softmax(-1), [3, 5, 5, 2]) == [2, 5, 7, 10]
    assert ctc_align(lp.log_softmax(-1), [3, 5, 2]) in ([2, 5, 10], [2, 7, 10])
    assert ctc_align(lp[:3].log_softmax(-1), [3, 5, 5, 2]) == []  # 4 labels + a blank > 3 frames
    assert span_labels([2, 6, 10], [3, 5, 2], 14).tolist() == [3, 3, 3, 3, 5, 5, 5, 5, 2, 2, 2, 2, 2, 0]
    assert span_labels([], [3], 4).tolist() == [-1] * 4  # not aligned: every frame unknown


def test_ctc_head_learns_separable_features_and_depends_only_on_its_generator():
    """The alignment's linear CTC head reads class sequences off features where each class has its own
    direction, and the same generator seed gives the same head (not the global random state)."""
    from llama_avsr.training.warmup import _greedy, fit_ctc_head

    g = torch.Generator().manual_seed(1)
    protos = torch.randn(6, 16, generator=g) * 3
    feats, ys = [], []
    for _ in range(48):
        y = torch.randperm(5, generator=g)[:4] + 1  # no repeat: nothing for a blank to separate
        frames = [0, *[int(c) for c in y for _ in range(3)], 0]  # 3 frames per class, silence around
        feats.append(protos[frames] + 0.3 * torch.randn(len(frames), 16, generator=g))
        ys.append(y)
    heads = []
    for _ in range(2):
        torch.manual_seed(len(heads))  # a different global state each time
        heads.append(fit_ctc_head(feats, ys, 6, torch.Generator().manual_seed(0), epochs=40, lr=1e-2))
    assert torch.equal(heads[0].weight, heads[1].weight)
    with torch.no_grad():
        right = sum(
            _greedy(heads[0](f).log_softmax(-1)) == y.tolist() for f, y in zip(feats, ys, strict=True)
        )
    assert right >= 40, right


@pytest.mark.parametrize("size", [None, 6])
def test_encoder_warmup_batch_size_sets_the_batches_of_the_encoder_warmup(corpus, tmp_path, size):
    """``train.encoder_warmup_batch_size``: the trainable encoder's warm-up reads batches of up to that
    many utterances (12 training utterances: 2 batches an epoch at 6), its frame budget grown to match;
    unset, the training batches (data.max_batch_size 2 here)."""
    from llama_avsr.models.avsr import AVSRModel
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    exp = encoder_rate_exp(
        corpus,
        tmp_path,
        "train.ctc_warmup_streams={audio: 0, video: 2}",
        "train.ctc_warmup_epochs=1",
        "data.max_batch_size=2",
        "data.max_frames=400",
        f"train.encoder_warmup_batch_size={'null' if size is None else size}",
    )
    model = AVSRLightning(exp).model
    sizes: list[int] = []
    plain = AVSRModel.encoder_features

    def spy(self, name, batch):
        if name == "video" and torch.is_grad_enabled():  # the warm-up's training steps
            sizes.append(len(batch))
        return plain(self, name, batch)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(AVSRModel, "encoder_features", spy)
        ctc_warmup(model, exp)
    assert sum(sizes) == 2 * 12
    assert max(sizes) == (2 if size is None else 6)
    with pytest.raises(ValueError, match="encoder_warmup_batch_size"):
        encoder_rate_exp(corpus, tmp_path, "train.encoder_warmup_batch_size=0")
    with pytest.raises(ValueError, match="encoder_warmup_batch_size needs train.ctc_warmup_rate"):
        encoder_rate_exp(
            corpus, tmp_path, "train.encoder_warmup_batch_size=4", "train.ctc_warmup_rate=stream"
        )


def test_teacher_warmup_with_noisy_audio_variants_hears_the_teacher_clean(corpus, tmp_path):
    """A recipe whose audio is augmented in fixed variants (as the demo's) can still use the audio as a
    feature teacher: the teacher's modality is read clean in the warm-up, its variants dropped with it."""
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    exp = teacher_exp(corpus, tmp_path, "data.train_augment=[audio]", "data.augment_variants={audio: 2}")
    report = ctc_warmup(AVSRLightning(exp).model, exp)
    assert "video.teacher" in report.first_loss


def aligner_exp(corpus: Path, tmp_path: Path, *extra: str):
    return encoder_rate_exp(
        corpus,
        tmp_path,
        "train.ctc_warmup_streams={audio: 4, video: 8}",
        "train.ctc_warmup_epochs=20",
        "train.warmup_aligners={video: audio}",
        *extra,
    )


def assert_aligned_labels_read_the_transcripts(exp, model):
    """Build the video stream's aligner (``train.warmup_aligners``): it labels every training utterance,
    and each aligned one's frame classes read its transcript's tokens in order; at least half are
    aligned. Returns the aligner's report."""
    from llama_avsr.data.dataset import load_split
    from llama_avsr.training.warmup import WarmupReport, _Aligner, _collect

    _, targets = _collect(model, exp, [])
    vocab = torch.unique(torch.cat(targets))
    index = torch.zeros(int(vocab.max()) + 1, dtype=torch.long)
    index[vocab] = torch.arange(1, len(vocab) + 1)
    report = WarmupReport([], 0, 0, {}, 0.0)
    aligner = _Aligner.build(model, exp, "video", index, torch.Generator().manual_seed(0), report, epochs=60)
    ids = [u.id for u in load_split(exp.data, "train")]  # the order of ``targets``
    assert set(aligner.labels) == set(ids)
    aligned = 0
    for utt, y in zip(ids, targets, strict=False):
        lab = aligner.labels[utt]
        if int(lab[0]) < 0:
            continue
        aligned += 1
        runs = [int(v) for k, v in enumerate(lab) if v > 0 and (k == 0 or v != lab[k - 1])]
        assert runs == [int(v) for k, v in enumerate(index[y]) if k == 0 or v != index[y][k - 1]]
    assert aligned >= len(targets) // 2
    return report


def test_aligned_frame_targets_read_the_transcript_and_train_encoder_and_projector(corpus, tmp_path):
    """``train.warmup_aligners={video: audio}``: the transcripts are aligned on the audio; every aligned
    utterance's video frame classes read its tokens in order, with silence around them; the encoder's
    frame cross-entropy and the projector's fall in the warm-up, and nothing is added to the model."""
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    exp = aligner_exp(corpus, tmp_path)
    torch.manual_seed(0)
    model = AVSRLightning(exp).model
    assert_aligned_labels_read_the_transcripts(exp, model)
    n_params = sum(p.numel() for p in model.parameters())
    report = ctc_warmup(model, exp)
    assert {"video.encoder.aligned", "video.aligned"} <= set(report.last_loss)
    for key in ("video.encoder.aligned", "video.aligned"):
        assert report.last_loss[key] < 0.95 * report.first_loss[key], key
    assert sum(p.numel() for p in model.parameters()) == n_params
    assert_video_tokens_at_embedding_norm(exp, model)


def test_aligner_settings_are_checked(corpus, tmp_path):
    from llama_avsr.training.config import ExperimentConfig
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    with pytest.raises(ValueError, match="warmup_aligners needs train.ctc_warmup_rate: encoder"):
        ExperimentConfig.load(TINY, overrides(corpus, tmp_path) + ["train.warmup_aligners={video: audio}"])
    with pytest.raises(ValueError, match="warmup_aligner_weight"):
        aligner_exp(corpus, tmp_path, "train.warmup_aligner_weight=-1")
    exp = aligner_exp(corpus, tmp_path, "train.warmup_aligners={video: video}")
    with pytest.raises(ValueError, match="teacher must be another stream"):
        ctc_warmup(AVSRLightning(exp).model, exp)


def test_warmup_reports_the_token_error_on_validation_utterances_too(corpus, tmp_path):
    """With ``data.val_csv`` the report (and ``ctc_warmup.json``) gives each fit's greedy token error on the
    validation utterances as well as on the training ones: the frozen stream's projector, the trainable
    encoder at its own rate and its projector."""
    exp = encoder_rate_exp(
        corpus,
        tmp_path,
        "data.val_csv=synth_val.csv",
        "train.ctc_warmup_streams={audio: 2, video: 2}",
        "train.ctc_warmup_epochs=2",
    )
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    torch.manual_seed(0)
    report = ctc_warmup(AVSRLightning(exp).model, exp)
    assert set(report.val_token_error_rate) == {"audio", "video.encoder", "video"}
    assert all(0.0 <= v <= 1.0 for v in report.val_token_error_rate.values())
    # without validation labels only the training figure exists
    exp = encoder_rate_exp(
        corpus, tmp_path, "train.ctc_warmup_streams={audio: 2}", "train.ctc_warmup_epochs=2"
    )
    report = ctc_warmup(AVSRLightning(exp).model, exp)
    assert report.val_token_error_rate == {} and set(report.token_error_rate) == {"audio"}


def test_token_error_counts_a_token_no_training_transcript_has_as_an_error():
    """A validation transcript may hold a token outside the warm-up's classes: it cannot be predicted, so
    it is an error (a substitution or a deletion), never an index error or a silent match."""
    from llama_avsr.training.warmup import _token_error_rate

    index = torch.zeros(10, dtype=torch.long)
    index[torch.tensor([4, 7])] = torch.tensor([1, 2])  # training tokens 4 and 7 → classes 1 and 2

    def logits(path: list[int]):
        return lambda x: torch.nn.functional.one_hot(torch.tensor(path), 3).float()

    feats = [torch.zeros(4, 2)]
    assert _token_error_rate(logits([1, 0, 2, 0]), feats, [torch.tensor([4, 7])], [0], index) == 0.0
    # token 12 is past the table, token 5 inside it but never in training: 2 of 4 wrong
    rate = _token_error_rate(logits([1, 0, 2, 0]), feats, [torch.tensor([4, 12, 7, 5])], [0], index)
    assert rate == pytest.approx(0.5)


VIDEO_ONLY = [
    "model.streams={video: {encoder: avhubert, inputs: [video], compression: {kind: stack, ratio: 2}, "
    "projector: {hidden: 32}, begin_token: '<video>', end_token: '</video>'}}",
    "model.encoders={avhubert: {kind: avhubert, arch: tiny-avhubert, frozen: false}}",
]
ALIGNER = (
    "train.aligner_encoders={whisper: {kind: whisper, arch: tiny-whisper, options: {pad_to_30s: false}}}"
)


def test_a_video_only_model_aligns_its_lip_targets_with_an_alignment_encoder(corpus, tmp_path):
    """``train.aligner_encoders``: a model that reads no audio (VSR) still gets frame targets aligned on
    the soundtrack, by an encoder built for the alignment alone; its labels read each aligned
    transcript's tokens in order, the encoder and projector learn them, and the model gains no encoder."""
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import ctc_warmup

    exp = encoder_rate_exp(
        corpus,
        tmp_path,
        *VIDEO_ONLY,
        ALIGNER,
        "train.ctc_warmup_streams={video: 8}",
        "train.ctc_warmup_epochs=20",
        "train.warmup_aligners={video: whisper}",
    )
    torch.manual_seed(0)
    model = AVSRLightning(exp).model
    assert list(model.encoders) == ["avhubert"] and exp.model.modalities == ["video"]
    report = assert_aligned_labels_read_the_transcripts(exp, model)
    assert "video.alignment" in report.token_error_rate
    n_params = sum(p.numel() for p in model.parameters())
    report = ctc_warmup(model, exp)
    for key in ("video.encoder.aligned", "video.aligned"):
        assert report.last_loss[key] < 0.95 * report.first_loss[key], key
    assert sum(p.numel() for p in model.parameters()) == n_params


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["train.warmup_aligners={video: whisper}", ALIGNER.replace("whisper:", "video:", 1)],
            "also name streams",
        ),
        ([ALIGNER], "not the teacher of any"),
        (
            [
                "train.warmup_aligners={video: whisper}",
                ALIGNER.replace("arch: tiny-whisper", "arch: tiny-whisper, frozen: false"),
            ],
            "must be frozen",
        ),
    ],
)
def test_alignment_encoder_settings_are_checked(corpus, tmp_path, settings, message):
    with pytest.raises(ValueError, match=message):
        encoder_rate_exp(corpus, tmp_path, *VIDEO_ONLY, "train.ctc_warmup_streams={video: 1}", *settings)


def test_a_run_starts_from_trained_parts_and_does_not_warm_them_up(corpus, tmp_path, caplog):
    """train.init_from: every part starts from the source model (with lr 0 the weights stay the
    source's); the initialised audio stream is left out of the CTC warm-up that names it, with a warning."""
    from safetensors.torch import load_file

    first = tmp_path / "first"
    assert main(["train", "--config", str(TINY), *overrides(corpus, first), "train.max_steps=2"]) == 0
    src = first / "model"
    second = tmp_path / "second"
    parts = f"train.init_from={{audio: {src}, video: {src}, llm: {src}}}"
    warm = "train.ctc_warmup_streams={audio: 2}"
    run = [*overrides(corpus, second), parts, warm, "train.lr=0", "train.max_steps=2"]
    with caplog.at_level("WARNING", logger="llama_avsr.training.warmup"):
        assert main(["train", "--config", str(TINY), *run]) == 0
    assert json.loads((second / "ctc_warmup.json").read_text())["streams"] == []
    assert "audio start from trained models (train.init_from): not warmed up" in caplog.text
    a, b = (
        load_file(str(src / "trainable.safetensors")),
        load_file(str(second / "model" / "trainable.safetensors")),
    )
    assert a.keys() == b.keys()
    stats = ("running_mean", "running_var", "num_batches_tracked")  # BatchNorm statistics move in training
    weights = [k for k in a if not k.endswith(stats)]
    assert any(k.startswith("projectors.video.") for k in weights) and any("lora_" in k for k in weights)
    assert all(torch.equal(a[k], b[k]) for k in weights)
    # without init_from the same run starts elsewhere
    third = tmp_path / "third"
    assert (
        main(["train", "--config", str(TINY), *overrides(corpus, third), "train.lr=0", "train.max_steps=2"])
        == 0
    )
    c = load_file(str(third / "model" / "trainable.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in weights)


def test_alignment_features_in_a_feature_cache_folder_serve_a_later_run(corpus, tmp_path, monkeypatch):
    """``train.feature_cache`` a folder: the alignment encoder's features are stored there, and a later
    run with the same encoder reads them instead of encoding the soundtrack again (the demo's VSR stage
    computes them, its AVSR stage's warm-up reads them); the labels are the same."""
    from llama_avsr.models.encoders.whisper import WhisperEncoder
    from llama_avsr.training.module import AVSRLightning
    from llama_avsr.training.warmup import WarmupReport, _Aligner, _collect

    cache = tmp_path / "features"
    exp = encoder_rate_exp(
        corpus,
        tmp_path,
        *VIDEO_ONLY,
        ALIGNER,
        "train.ctc_warmup_streams={video: 1}",
        "train.warmup_aligners={video: whisper}",
        f"train.feature_cache={cache}",
    )

    def labels():
        torch.manual_seed(0)  # the same random alignment encoder in both runs
        model = AVSRLightning(exp).model
        _, targets = _collect(model, exp, [])
        vocab = torch.unique(torch.cat(targets))
        index = torch.zeros(int(vocab.max()) + 1, dtype=torch.long)
        index[vocab] = torch.arange(1, len(vocab) + 1)
        report = WarmupReport([], 0, 0, {}, 0.0)
        return _Aligner.build(model, exp, "video", index, torch.Generator().manual_seed(0), report).labels

    first = labels()
    stored = list(cache.rglob("*.safetensors"))
    assert len(stored) == len(first) == 12  # one entry per training utterance

    def no_encoding(*args, **kwargs):
        raise AssertionError("the alignment encoder ran although its features are in the cache")

    monkeypatch.setattr(WhisperEncoder, "forward", no_encoding)
    second = labels()
    assert second.keys() == first.keys()
    assert all(torch.equal(second[k], first[k]) for k in first)
    assert sorted(cache.rglob("*.safetensors")) == sorted(stored)
