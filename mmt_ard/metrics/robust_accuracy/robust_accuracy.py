"""Robust accuracy: the fraction of images still classified correctly under every attack (per-image worst case).

An `evaluate` metric module, loadable by path offline:

    >>> import evaluate
    >>> metric = evaluate.load("path/to/mmt_ard/metrics/robust_accuracy")
    >>> metric.compute(predictions=[[3, 3], [1, 2]], references=[3, 1], clean_predictions=[3, 1])
    {'robust_accuracy': 0.5, 'num_samples': 2, 'clean_accuracy': 1.0, 'per_attack_accuracy': {'attack_0': 1.0, 'attack_1': 0.5}}

`predictions` holds, per image, the class predicted on the attacked image: one integer (one attack) or a list with
one entry per attack (e.g. APGD-CE and APGD-T). An image counts as robust only if every entry equals its reference
and, when `clean_predictions` is given, its clean prediction is correct as well (an image misclassified without
attack is never robust). The attacks themselves are run by `mmt_ard.evaluation` (`evaluate_robustness` or
`run_attack`), which also reports the sample count and the protocol; always publish those with the number.
"""

import datasets
import evaluate
import numpy as np

_CITATION = """\
@inproceedings{croce2020reliable,
  title={Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks},
  author={Croce, Francesco and Hein, Matthias},
  booktitle={ICML},
  year={2020}
}
"""

_DESCRIPTION = """\
Robust accuracy under adversarial attack: the fraction of images that are classified correctly on the clean input
and on the adversarial input of every attack (the per-image worst case over attacks, as in AutoAttack).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions: per image, the predicted class on the attacked image (`int`), or a list with one predicted class
        per attack (all images must list the same attacks, in the same order).
    references: per image, the true class (`int`).
    clean_predictions: optional, per image, the predicted class on the clean image.
    attack_names: optional names of the attacks, in the order of `predictions`' inner lists.
Returns:
    robust_accuracy: fraction of images robust to every attack (and correct when clean, if given).
    num_samples: number of images (publish it with the accuracy).
    clean_accuracy: accuracy on the clean images (only with `clean_predictions`).
    per_attack_accuracy: per attack, the fraction of images that attack alone did not fool (with `clean_predictions`,
        also requiring a correct clean prediction).
Examples:
    >>> metric = evaluate.load("mmt_ard/metrics/robust_accuracy")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 2])["robust_accuracy"]
    0.6666666666666666
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class RobustAccuracy(evaluate.Metric):
    """Per-image worst-case accuracy over one or more attacks."""

    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=[
                datasets.Features(
                    {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
                ),
                datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
            ],
            reference_urls=["https://arxiv.org/abs/2003.01690"],
        )

    def _compute(self, predictions, references, clean_predictions=None, attack_names=None):
        references = np.asarray(references, dtype=np.int64)  # (N,)
        n = int(references.shape[0])
        if n == 0:
            raise ValueError("`references` is empty: robust accuracy needs at least one image.")
        preds = np.asarray(predictions, dtype=np.int64)
        if preds.ndim == 1:
            preds = preds[:, None]  # (N, A), one column per attack
        if preds.ndim != 2 or preds.shape[0] != n:
            raise ValueError(
                f"`predictions` has shape {preds.shape}: give one int, or one list of the same length, per image."
            )
        fooled_not = preds == references[:, None]  # (N, A): attack a did not fool image i
        robust = fooled_not.all(axis=1)  # (N,)
        result = {}
        if clean_predictions is not None:
            clean = np.asarray(clean_predictions, dtype=np.int64)
            if clean.shape != (n,):
                raise ValueError(f"`clean_predictions` has shape {clean.shape}: give one int per image ({n}).")
            clean_correct = clean == references
            robust = robust & clean_correct
            fooled_not = fooled_not & clean_correct[:, None]
            result["clean_accuracy"] = float(clean_correct.mean())
        names = list(attack_names) if attack_names is not None else [f"attack_{a}" for a in range(preds.shape[1])]
        if len(names) != preds.shape[1]:
            raise ValueError(f"`attack_names` has {len(names)} names for {preds.shape[1]} attacks per image.")
        return {
            "robust_accuracy": float(robust.mean()),
            "num_samples": n,
            **result,
            "per_attack_accuracy": {name: float(fooled_not[:, a].mean()) for a, name in enumerate(names)},
        }
