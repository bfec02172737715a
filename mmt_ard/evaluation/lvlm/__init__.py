"""Robustness of vision-language models themselves (RobustVLM's protocol): APGD on the language model's loss,
CIDEr and VQA accuracy, clean and adversarial. See docs/lvlm.md and the `mmt-ard-eval-lvlm` command."""

from ..._lazy import lazy_exports

# public name -> the module that defines it, imported on first use (mmt_ard/_lazy.py)
_EXPORTS = {
    "targeted_batch": ".attack",
    "text_attack": ".attack",
    "worst_case_batch": ".attack",
    "LVLMSample": ".data",
    "LVLMTaskData": ".data",
    "load_lvlm_data": ".data",
    "cider_scores": ".metrics",
    "normalize_vqa_answer": ".metrics",
    "ptb_tokenize": ".metrics",
    "vqa_accuracy": ".metrics",
    "LVLMAdapter": ".model",
    "PipelineAdapter": ".model",
    "make_adapter": ".model",
    "load_lvlm": ".model",
    "LVLMProtocol": ".protocol",
    "evaluate_lvlm": ".runner",
    "evaluate_lvlm_on_data": ".runner",
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = sorted([*_EXPORTS])
