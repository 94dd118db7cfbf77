"""``llama-avsr synth``: make the synthetic audio-visual corpus (LRS3 layout) anyone can build locally."""

from __future__ import annotations

import argparse
import logging
import os

HELP = "make a synthetic audio-visual corpus (espeak-ng speech + animated lips) in the LRS3 layout"
DESCRIPTION = """\
Make a synthetic audio-visual speech corpus that any machine can build in a minute: sentences from a
~290-word grammar spoken by espeak-ng voices (14 speakers: 10 training voices, which also speak in the
validation and test splits, two held out for validation and two others held out for test), and
96x96 gray mouth-region videos at 25 fps whose lips follow the phonemes. The layout and label CSVs are
those of LRS3 prepared by auto_avsr, so every other command reads it like the real corpus:

  OUT/<dataset>/<split>/<speaker>/<NNNNN>.mp4 and .wav
  OUT/labels/<dataset>_{train,val,test}.csv   (dataset_name,rel_path,input_length,word_ids,text)
  OUT/raw/test/<speaker>/<NNNNN>.mp4 and .txt  full-face 30 fps videos with audio (inputs for
                                               'prepare' and 'transcribe')
  OUT/synth.json                               manifest (seed, counts, speakers, vocabulary)

Validation and test sentences never occur in training (nor in each other), and some adjective-noun
combinations are seen only in test. Default babble noise (data.noise_file / data.eval_noise_file unset)
comes from two tracks with disjoint talkers: one for training, one for validation and test.
The same --seed gives the same sentences, audio (bit-identical) and rendered lip frames whatever --jobs
is. Needs espeak-ng (apt-get install espeak-ng).
"""
EXAMPLES = """\
llama-avsr synth -o corpus --train 1000 --val 100 --test 100
llama-avsr synth -o faces --train 0 --val 0 --test 20 --faces 20   # full-face raw videos for `prepare`
"""

log = logging.getLogger(__name__)


def _count(value: str) -> int:
    n = int(value)
    if n < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return n


def _positive(value: str) -> int:
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-o",
        "--out",
        required=True,
        help="output folder (created if needed; files of the same names are overwritten)",
    )
    parser.add_argument("--train", type=_count, default=1000, help="number of training utterances")
    parser.add_argument(
        "--val",
        type=_count,
        default=100,
        help="number of validation utterances (training voices and the validation's held-out voices)",
    )
    parser.add_argument(
        "--test",
        type=_count,
        default=100,
        help="number of test utterances (training voices and the test's held-out voices)",
    )
    parser.add_argument(
        "--faces", type=_count, default=2,
        help="number of full-face raw videos (30 fps, 320x240, with audio and transcript) made from the first test utterances",
    )  # fmt: skip
    parser.add_argument(
        "--seed", type=int, default=0, help="random seed: sentences, voices, appearance, noise"
    )
    parser.add_argument(
        "--jobs", type=_positive, default=min(2, os.cpu_count() or 1),
        help="worker processes (1 = run in this process); the output does not depend on it",
    )  # fmt: skip
    parser.add_argument(
        "--dataset", default="synth", help="dataset name: folder under OUT and first CSV field"
    )


def run(args: argparse.Namespace) -> int:
    from llama_avsr.synth import tts
    from llama_avsr.synth.corpus import SynthConfig, generate

    try:
        cfg = SynthConfig(
            out=args.out, n_train=args.train, n_val=args.val, n_test=args.test,
            n_faces=args.faces, seed=args.seed, jobs=args.jobs, dataset=args.dataset,
        )  # fmt: skip
        manifest = generate(cfg)
    except (ValueError, tts.EspeakError) as e:
        log.error("synth: %s", e)
        return 1
    log.info(
        "synthetic corpus ready: %s (train %d, val %d, test %d, faces %d)",
        cfg.out, cfg.n_train, cfg.n_val, cfg.n_test, len(manifest["faces"]),
    )  # fmt: skip
    return 0
