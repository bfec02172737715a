"""Every registered LVLM class (mmt_ard.lvlm.LVLM_CLASSES) on a tiny random model built in-process from its own
config and processor classes: the differentiable image pipeline equals the processor, the greedy reply equals
`model.generate(**processor(...))`, the attack stays in budget and raises the loss, gradient checkpointing covers the
tower. Export into each class: tests/test_lvlm_export.py."""

import numpy as np
import pytest
import torch
from _lvlm_tiny import build_tiny_class
from PIL import Image

from mmt_ard.evaluation.lvlm import text_attack
from mmt_ard.evaluation.lvlm.model import PipelineAdapter
from mmt_ard.lvlm import LVLM_CLASSES, image_pipeline, lvlm_class, pil_resize
from mmt_ard.lvlm.resample import BICUBIC, BILINEAR, LANCZOS

CLASSES = {
    "llava": "LlavaForConditionalGeneration",
    "llava_next": "LlavaNextForConditionalGeneration",
    "llava_onevision": "LlavaOnevisionForConditionalGeneration",
    "paligemma": "PaliGemmaForConditionalGeneration",
    "idefics3": "Idefics3ForConditionalGeneration",
    "smolvlm": "SmolVLMForConditionalGeneration",
    "gemma3": "Gemma3ForConditionalGeneration",
    "aya_vision": "AyaVisionForConditionalGeneration",
    "vipllava": "VipLlavaForConditionalGeneration",
    "llava_next_video": "LlavaNextVideoForConditionalGeneration",
}
# sizes that exercise the processors' branches: a wide and a tall image (pinpoints, padding, row/column splits), one
# the size of a crop, one smaller than a crop, and one with odd sides
SIZES = [(24, 40), (40, 23), (16, 16), (9, 13), (33, 50)]


def _images(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in SIZES]


def _tensor(arr):
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255.0


@pytest.fixture(scope="module", params=list(CLASSES))
def tiny(request):
    model, processor = build_tiny_class(request.param)
    return request.param, model, processor


def test_registry_covers_the_classes_and_refuses_others_in_one_line():
    assert set(CLASSES.values()) == set(LVLM_CLASSES)  # every registered class has its tiny model here
    with pytest.raises(ValueError) as err:
        lvlm_class({"architectures": ["Qwen2VLForConditionalGeneration"]}, "some/qwen")
    msg = str(err.value)
    assert "\n" not in msg and "Qwen2VLForConditionalGeneration" in msg
    assert all(name in msg for name in LVLM_CLASSES)


@pytest.mark.parametrize("resample", [BILINEAR, BICUBIC, LANCZOS])
def test_pil_resize_is_pillows_resize_with_a_gradient(resample):
    rng = np.random.default_rng(resample)
    for (h, w), (th, tw) in [((37, 53), (16, 16)), ((20, 20), (48, 31)), ((64, 48), (33, 33)), ((30, 40), (30, 17))]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        ref = np.asarray(Image.fromarray(arr).resize((tw, th), resample=resample)).astype(np.float64) / 255
        x = _tensor(arr).requires_grad_(True)
        out = pil_resize(x, (th, tw), resample)
        assert np.abs(out.detach().permute(1, 2, 0).double().numpy() - ref).max() < 1e-6
        out.sum().backward()  # the weights of each output pixel sum to 1: the gradient sums to the output size
        assert x.grad.sum().item() == pytest.approx(3 * th * tw, rel=1e-4)


def test_pipeline_equals_the_processor_on_every_image_input(tiny):
    name, _, processor = tiny
    pipe = image_pipeline(processor, LVLM_CLASSES[CLASSES[name]].pipeline)
    assert pipe.backend == "pil" and pipe.backend_note() is None
    for arr in _images():
        ref = processor.image_processor(images=[Image.fromarray(arr)], return_tensors="pt")
        out = pipe(_tensor(arr))
        for key, value in ref.items():
            if key == "num_crops":  # Gemma 3's pan-and-scan count: not a model input, 0 without pan-and-scan
                assert value.tolist() == [0]
                continue
            if key == "num_patches":  # Aya Vision's tile count: the processor uses it for the prompt only
                assert value.tolist() == [out["pixel_values"].shape[0]]
                continue
            assert tuple(out[key].shape) == tuple(value.shape), (name, key, arr.shape)
            assert (out[key].double() - value.double()).abs().max().item() <= 1e-5, (name, key, arr.shape)
        assert set(out) <= set(ref), set(out) - set(ref)


def test_smolvlm_image_only_processor_prompts_as_smolvlms_own():
    """Without torchvision SmolVLMProcessor is built without its video processor, whose frame count and rate its own
    `apply_chat_template` reads (for videos only): the image-only processor renders an image prompt as SmolVLMProcessor
    does with a video processor (the tiny template and SmolVLM's own), the processor expands it to the image tokens of
    every crop, and a video is refused in one line."""
    from types import SimpleNamespace

    import transformers as T
    from _lvlm_tiny import build_tiny_idefics3
    from transformers.models.smolvlm.processing_smolvlm import DEFAULT_CHAT_TEMPLATE

    _, processor = build_tiny_idefics3(smolvlm=True)
    conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color is this"}]}]
    image = Image.fromarray(_images(5)[0])
    with_video = SimpleNamespace(num_frames=64, fps=1)  # SmolVLM's video processor's defaults
    for template in (None, DEFAULT_CHAT_TEMPLATE):  # the tiny one, and SmolVLM's own
        kw = {"chat_template": template, "add_generation_prompt": True}
        ours = processor.apply_chat_template(conversation, **kw)
        processor.video_processor = with_video
        try:
            theirs = T.SmolVLMProcessor.apply_chat_template(processor, conversation, **kw)
        finally:
            processor.video_processor = None
        assert ours == theirs and ours.count("<image>") == 1
    assert "<image>" in ours and ours.endswith("Assistant:")
    enc = processor(text=[ours], images=[image], return_tensors="pt")
    assert (enc["input_ids"] == processor.image_token_id).sum().item() == processor.image_seq_len * 5  # 4 crops + 1
    video = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "describe"}]}]
    with pytest.raises(ValueError, match="without a video processor.*images only"):
        processor.apply_chat_template(video, add_generation_prompt=True)


def test_greedy_reply_and_image_tokens_equal_the_processors(tiny):
    _, model, processor = tiny
    arr = _images(2)[0]  # 24 x 40: several crops for the tiling classes
    adapter = PipelineAdapter(model, processor, image_size=arr.shape[:2])
    prompt = adapter.prompt("describe this image")
    enc = processor(text=[prompt], images=[Image.fromarray(arr)], return_tensors="pt")
    assert adapter.text_inputs(prompt, arr.shape[:2])["input_ids"].equal(enc["input_ids"])  # image token count
    ref = model.generate(**enc, max_new_tokens=5, do_sample=False, pad_token_id=0)[0, enc["input_ids"].shape[1] :]
    x = adapter.pixels_from_arrays([arr])
    assert adapter.generate_ids(x, [prompt], 5) == [ref.tolist()]
    space = adapter.attack_space()
    assert space["image_size"] == [24, 40] and space["crops"] >= 1


def test_attack_stays_in_budget_and_raises_the_loss(tiny):
    name, model, processor = tiny
    adapter = PipelineAdapter(model, processor, image_size=(20, 28))
    x = adapter.pixels_from_arrays(_images(3)[:2])
    prompts = [adapter.prompt("describe this image")] * 2
    refs = ["a red square", "a blue circle"]
    eps = 16 / 255
    with torch.no_grad():
        clean = adapter.loss(x, prompts, refs)
    x_adv, loss = text_attack(adapter, x, prompts, refs, eps=eps, n_iter=4, seed=0, keys=["a", "b"])
    assert (x_adv - x).abs().max().item() <= eps + 1e-6 and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        again = adapter.loss(x_adv, prompts, refs)
    assert torch.allclose(again, loss, atol=1e-4)
    assert (loss > clean).all(), (name, clean, loss)
    # one sample at a time: a sample's loss does not depend on the batch it is in
    with torch.no_grad():
        alone = adapter.loss(x[1:], prompts[1:], refs[1:])
    assert alone.item() == pytest.approx(clean[1].item(), abs=1e-6)


def test_gradient_checkpointing_covers_the_tower_and_changes_nothing(tiny):
    from transformers.modeling_layers import GradientCheckpointingLayer

    name, model, processor = tiny
    tower_layers = [m for n, m in model.named_modules() if isinstance(m, GradientCheckpointingLayer) and "vision" in n]
    assert tower_layers, name
    x = PipelineAdapter(model, processor, image_size=(24, 40)).pixels_from_arrays(_images(4)[:1])
    calls = []

    def counted(func):
        def wrapper(*args, **kwargs):
            calls.append(1)
            return func(*args, **kwargs)

        return wrapper

    results = []
    for checkpointing in (False, True):
        adapter = PipelineAdapter(model, processor, gradient_checkpointing=checkpointing, image_size=(24, 40))
        if checkpointing:
            for layer in tower_layers:
                layer._gradient_checkpointing_func = counted(layer._gradient_checkpointing_func)
        xr = x.clone().requires_grad_(True)
        loss = adapter.loss(xr, [adapter.prompt("describe this image")], ["a blue circle"])
        loss.sum().backward()
        results.append((loss.detach(), xr.grad))
    model.gradient_checkpointing_disable()
    assert len(calls) >= len(tower_layers), (len(calls), len(tower_layers))  # every tower layer ran checkpointed
    assert torch.allclose(results[0][0], results[1][0], atol=1e-6)
    assert torch.allclose(results[0][1], results[1][1], atol=1e-6)


def test_evaluate_lvlm_runs_every_class_and_ignores_the_batch_size(tiny, tmp_path):
    from _lvlm_tiny import save_square_datasets

    from mmt_ard.evaluation.lvlm import LVLMProtocol, evaluate_lvlm

    _, model, processor = tiny
    cap_dir, _ = save_square_datasets(str(tmp_path), n=3)
    settings = {"eps": (16 / 255,), "n_iter": 2, "max_references": 1, "refine": False, "caption_max_new_tokens": 4}
    runs = []
    for batch_size in (1, 3):
        report = evaluate_lvlm(
            (model, processor),
            [cap_dir],
            protocol=LVLMProtocol(**settings, batch_size=batch_size),
            image_size=(20, 28),
            device="cpu",
            progress=False,
            verbose=False,
        )
        runs.append(report["results"][0])
    first, second = runs
    assert first["num_samples"] == 3 and first["attack_space"]["image_size"] == [20, 28]
    pixel_values = processor.image_processor(images=[Image.new("RGB", (28, 20))], return_tensors="pt")["pixel_values"]
    assert first["attack_space"]["crops"] == (1 if pixel_values.dim() == 4 else pixel_values.shape[1])  # as processed
    strip = lambda r: {k: v for k, v in r.items() if k not in ("time_s", "seconds_per_sample")}
    assert strip(first) == strip(second)  # the same replies and scores at batch size 1 and 3


def test_unreproduced_processor_options_are_refused_with_the_fix():
    import transformers as T

    from mmt_ard.lvlm.resample import NEAREST, pil_weights

    with pytest.raises(ValueError, match="do_pan_and_scan = False"):
        image_pipeline(T.Gemma3ImageProcessorPil(do_pan_and_scan=True), "single")
    with pytest.raises(ValueError, match="NEAREST.*BILINEAR, BICUBIC and LANCZOS"):
        pil_weights(10, 5, NEAREST)
    with pytest.raises(ValueError, match="`kind`='tiles'"):
        image_pipeline(T.SiglipImageProcessorPil(), "tiles")


def test_the_command_evaluates_a_saved_folder_of_every_class(tiny, tmp_path, capsys):
    import json

    from _lvlm_tiny import save, save_image_only_processor, save_square_datasets

    from mmt_ard.cli.eval_lvlm import main as eval_main

    name, model, processor = tiny
    folder = str(tmp_path / name)
    if type(processor).__name__.startswith("ImageOnly"):  # its save_pretrained needs the video processor
        save(folder, model)
        keys = ("num_image_tokens", "vision_feature_select_strategy", "patch_size", "num_additional_image_tokens")
        keys += ("image_seq_len",)  # SmolVLM's image tokens per crop
        config = {k: getattr(processor, k) for k in keys if getattr(processor, k, None) is not None}
        save_image_only_processor(folder, processor, **config)
    else:
        save(folder, model, processor)
    cap_dir, _ = save_square_datasets(str(tmp_path), n=2)
    out = tmp_path / "eval"
    argv = ["--models", folder, "--datasets", cap_dir, "--output-dir", str(out), "--eps", "8/255", "--n-iter", "1"]
    argv += ["--max-references", "1", "--no-refine", "--no-progress", "--image-size", "20x28"]
    assert eval_main(argv) == 0, capsys.readouterr().err
    result = json.loads((out / "results.json").read_text())["results"][0]
    assert result["num_samples"] == 2 and result["attack_space"]["image_size"] == [20, 28]
    assert LVLM_CLASSES[CLASSES[name]].pipeline in result["attack_space"]["pipeline"]


def test_the_command_refuses_pan_and_scan_before_evaluating(tmp_path, capsys):
    from _lvlm_tiny import build_tiny_gemma3, save, save_square_datasets

    from mmt_ard.cli.eval_lvlm import main as eval_main

    model, processor = build_tiny_gemma3()
    processor.image_processor.do_pan_and_scan = True
    folder = save(str(tmp_path / "gemma3"), model, processor)
    cap_dir, _ = save_square_datasets(str(tmp_path), n=2)
    capsys.readouterr()
    assert eval_main(["--models", folder, "--datasets", cap_dir, "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "do_pan_and_scan" in err[0] and not (tmp_path / "out").exists()
