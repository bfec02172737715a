"""Robustness of vision-language models themselves (RobustVLM's protocol): APGD on the language model's loss,
CIDEr and VQA accuracy, clean and adversarial. See docs/lvlm.md and the `mmt-ard-eval-lvlm` command."""

from .attack import targeted_batch, text_attack, worst_case_batch
from .data import LVLMSample, LVLMTaskData, load_lvlm_data
from .metrics import cider_scores, normalize_vqa_answer, ptb_tokenize, vqa_accuracy
from .model import LVLMAdapter, PipelineAdapter, load_lvlm, make_adapter
from .protocol import LVLMProtocol
from .runner import evaluate_lvlm, evaluate_lvlm_on_data

__all__ = [
    "LVLMAdapter",
    "LVLMProtocol",
    "LVLMSample",
    "LVLMTaskData",
    "PipelineAdapter",
    "cider_scores",
    "evaluate_lvlm",
    "evaluate_lvlm_on_data",
    "load_lvlm",
    "load_lvlm_data",
    "make_adapter",
    "normalize_vqa_answer",
    "ptb_tokenize",
    "targeted_batch",
    "text_attack",
    "vqa_accuracy",
    "worst_case_batch",
]
