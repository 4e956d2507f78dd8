"""Writes examples/sentiment/{train,dev}.csv: short movie-review sentences with a sentiment label.

The sentences are built from templates (with negations, so a bag of words is not enough), by a
fixed seed, so the files are the same on every run: `python examples/make_sentiment_data.py`.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

SUBJECTS = [
    "the film",
    "this movie",
    "the acting",
    "the plot",
    "the soundtrack",
    "the ending",
    "the script",
    "the cast",
    "the dialogue",
    "the direction",
    "the pacing",
    "the story",
]
POSITIVE = [
    "wonderful",
    "brilliant",
    "moving",
    "delightful",
    "gripping",
    "superb",
    "charming",
    "funny",
    "beautiful",
    "clever",
    "heartfelt",
    "memorable",
]
NEGATIVE = [
    "dull",
    "boring",
    "clumsy",
    "tedious",
    "awful",
    "predictable",
    "forgettable",
    "lifeless",
    "painful",
    "confusing",
    "shallow",
    "bland",
]
INTENSIFIERS = ["", "really ", "truly ", "rather ", "utterly ", "quite "]
OPENERS = ["", "honestly, ", "i thought ", "in the end ", "to be fair, ", "sadly, ", "overall "]


def sentence(rng: random.Random) -> tuple[str, str]:
    positive = rng.random() < 0.5
    negated = rng.random() < 0.3
    word = rng.choice(NEGATIVE if positive == negated else POSITIVE)
    verb = "was not" if negated else "was"
    text = f"{rng.choice(OPENERS)}{rng.choice(SUBJECTS)} {verb} {rng.choice(INTENSIFIERS)}{word}"
    return text.strip().capitalize() + ".", "positive" if positive else "negative"


def write(path: Path, rows: list[tuple[str, str]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)


def main() -> None:
    rng = random.Random(2019)
    rows = list(dict.fromkeys(sentence(rng) for _ in range(1200)))
    out = Path(__file__).resolve().parent / "sentiment"
    out.mkdir(exist_ok=True)
    write(out / "train.csv", rows[:400])
    write(out / "dev.csv", rows[400:520])


if __name__ == "__main__":
    main()
