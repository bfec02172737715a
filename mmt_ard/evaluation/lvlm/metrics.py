"""Captioning and VQA metrics: CIDEr (pycocoevalcap's scorer) and VQA accuracy (the VQAv2 rule).

**CIDEr** is computed by `pycocoevalcap.cider.cider_scorer.CiderScorer` (the COCO caption evaluation code; n = 1..4,
sigma = 6, idf from the references of the evaluated set) and reported x100, as papers do. COCO's own pipeline first
runs the Stanford PTB tokenizer (Java); here captions are tokenized in Python by `ptb_tokenize`, which follows the
same rules for caption text (lower-case; clitics such as `'s` and `n't` split off; punctuation split off and then
dropped, with the same punctuation list as pycocoevalcap) so no Java is needed. On ordinary captions the two agree
token for token; they can differ on rare constructs (abbreviations with inner periods, unusual quotes).

**VQA accuracy** follows the VQAv2 evaluation: answers are normalised (punctuation, number words to digits, articles
dropped, common contractions restored), and a prediction scores `min(1, #matching annotators / 3)` averaged over the
10 leave-one-annotator-out subsets of the answers.
"""

from __future__ import annotations

import re

import numpy as np

# pycocoevalcap's PTBTokenizer drops these tokens after tokenizing (brackets become -LRB- etc. and go too)
PTB_PUNCTUATION = {
    "''",
    "'",
    "``",
    "`",
    "-LRB-",
    "-RRB-",
    "-LCB-",
    "-RCB-",
    ".",
    "?",
    "!",
    ",",
    ":",
    "-",
    "--",
    "...",
    ";",
}
_BRACKETS = "()[]{}"
_CLITICS = re.compile(r"(?<=[a-z0-9])('s|'re|'ve|'ll|'d|'m|n't)\b")
_SPLIT = re.compile(
    r"(\.\.\.|--|[,;:!?\"()\[\]{}]|(?<![0-9])\.|\.(?![0-9])|(?<=\s)'(?!(?:s|re|ve|ll|d|m)\b)|'(?=\s|$))"
)


def ptb_tokenize(text: str) -> str:
    """PTB-style tokenization of a caption, lower-cased, punctuation removed: `"A dog's toy."` -> `a dog 's toy`."""
    text = " " + text.lower().replace("\n", " ").replace("\t", " ") + " "
    text = _CLITICS.sub(r" \1", text)
    text = _SPLIT.sub(r" \1 ", text)
    tokens = [t for t in text.split() if t not in PTB_PUNCTUATION and t not in _BRACKETS and t != '"']
    return " ".join(tokens)


def cider_scores(predictions: list[str], references: list[list[str]]) -> np.ndarray:
    """Per-sample CIDEr (x100) of `predictions[i]` against `references[i]`, with idf from all the references.

    The corpus CIDEr is the mean of these scores (as `pycocoevalcap.cider.Cider.compute_score` returns it).
    """
    try:
        from pycocoevalcap.cider.cider_scorer import CiderScorer
    except ImportError as err:
        raise ImportError(
            'CIDEr needs pycocoevalcap: `pip install "mmt_ard[lvlm]"` (or `pip install pycocoevalcap`).'
        ) from err

    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} reference sets.")
    if not predictions:
        return np.zeros(0)
    scorer = CiderScorer(n=4, sigma=6.0)
    for pred, refs in zip(predictions, references):
        if not refs:
            raise ValueError("every sample needs at least one reference caption.")
        scorer += (ptb_tokenize(pred), [ptb_tokenize(r) for r in refs])
    _, scores = scorer.compute_score()
    return 100.0 * np.asarray(scores, dtype=float)


# ---- VQA ----
_NUMBERS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
_ARTICLES = {"a", "an", "the"}
_CONTRACTED = (
    "aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've hasn't haven't he'd he'd've "
    "he's how'd how'll how's i'd've i'm i've isn't it'd it'd've it'll let's ma'am mightn't mightn't've might've "
    "mustn't must've needn't not've o'clock oughtn't shan't she'd've she's should've shouldn't shouldn't've "
    "somebody'd've somebody'll somebody's someone'd someone'd've someone'll someone's something'd something'd've "
    "something'll that's there'd there'd've there're there's they'd they'd've they'll they're they've 'twas wasn't "
    "we'd've we've weren't what'll what're what's what've when's where'd where's where've who'd who'd've who'll "
    "who's who've why'll why're why's won't would've wouldn't wouldn't've y'all y'all'll y'all'd've you'd you'd've "
    "you'll you're you've"
).split()
# an answer written without its apostrophes is read as the contraction ("dont" -> "don't")
CONTRACTIONS = {c.replace("'", ""): c for c in _CONTRACTED}
_VQA_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_COMMA_IN_NUMBER = re.compile(r"(\d)(,)(\d)")
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")  # the VQA evaluation's pattern: a period not followed by a digit


def _punctuation(text: str) -> str:
    out = text
    for p in _VQA_PUNCT:
        if (p + " " in text or " " + p in text) or _COMMA_IN_NUMBER.search(text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def normalize_vqa_answer(answer: str) -> str:
    """The VQAv2 answer normalisation: `"Two dogs."` -> `"2 dogs"`, `"the dont"` -> `"don't"`."""
    text = _punctuation(answer.replace("\n", " ").replace("\t", " ").strip())
    words = [_NUMBERS.get(w, w) for w in text.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA accuracy of one prediction against the annotators' answers (in [0, 1]).

    Each annotator is left out in turn; the prediction scores `min(1, matches among the others / 3)`; the mean over
    the turns is returned. With 10 answers: 0 matches -> 0, 1 -> 0.3, 2 -> 0.6, 3 or more -> 1 (rounded).
    """
    if not answers:
        raise ValueError("vqa_accuracy needs the annotators' answers (got none).")
    pred = normalize_vqa_answer(prediction)
    gts = [normalize_vqa_answer(a) for a in answers]
    scores = []
    for i in range(len(gts)):
        matches = sum(1 for j, g in enumerate(gts) if j != i and g == pred)
        scores.append(min(1.0, matches / 3.0))
    return float(sum(scores) / len(scores))


def postprocess_answer(text: str) -> str:
    """The answer part of a generated VQA reply: its first line, before any `Question`/`Answer` echo."""
    text = text.strip().split("\n")[0]
    return re.split(r"Question|Answer|Short", text, maxsplit=1)[0].strip()


def postprocess_caption(text: str) -> str:
    """The caption part of a generated reply: its first line, without quotes."""
    return text.strip().split("\n")[0].replace('"', "").strip()


def sample_scores(task: str, predictions: list[str], references: list[list[str]]) -> np.ndarray:
    """Per-sample scores in %: CIDEr (x100) for captioning, VQA accuracy (x100) for VQA."""
    if task == "captioning":
        return cider_scores(predictions, references)
    return np.array([100.0 * vqa_accuracy(p, r) for p, r in zip(predictions, references)], dtype=float)


METRIC_NAMES = {"captioning": "CIDEr", "vqa": "VQA accuracy"}
