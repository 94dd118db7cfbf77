"""argparse value types shared by the sub-commands: a bad value is a one-line usage error
(``llama-avsr eval: error: argument --beams: must be >= 1, got 0``), never a traceback."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer >= 1 (beam sizes, batch sizes, token counts)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def snr_list(text: str) -> str:
    """A comma-separated list of SNRs in dB or ``clean`` (checked here, parsed by the evaluation)."""
    parts = [p.strip().lower() for p in text.split(",") if p.strip()]
    if not parts:
        raise argparse.ArgumentTypeError("give at least one SNR, e.g. clean,10,0")
    for p in parts:
        if p in ("clean", "none", "inf"):
            continue
        try:
            float(p)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{p!r} is not an SNR: give numbers in dB or 'clean', e.g. clean,10,5,0,-5"
            ) from None
    return text


def rate_map(text: str) -> dict[str, int]:
    """``audio=16,video=5``: a compression rate per stream (checked against the model later)."""
    from llama_avsr.decoding.search import parse_rates

    try:
        rates = parse_rates(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not rates:
        raise argparse.ArgumentTypeError("give stream=rate pairs, e.g. audio=16,video=5")
    return rates
