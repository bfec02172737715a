"""`mmt-ard-eval-lvlm`: the attack on an LVLM's language-model loss, the metrics (hand-checked), the data layouts,
and an end-to-end run with resume on a tiny LLaVA trained in-process to caption and answer."""

import json
import os

import numpy as np
import pytest
import torch
from _lvlm_tiny import (
    CAPTION_INSTRUCTION,
    QUESTION,
    VQA_INSTRUCTION,
    build_tiny_llava,
    caption_of,
    save,
    save_square_datasets,
    square_images,
    trained_tiny_llava,
)

from mmt_ard.attacks.auto_pgd import apgd_objective
from mmt_ard.cli.eval_lvlm import main as eval_main
from mmt_ard.evaluation.lvlm import (
    LVLMAdapter,
    LVLMProtocol,
    cider_scores,
    evaluate_lvlm,
    load_lvlm_data,
    normalize_vqa_answer,
    ptb_tokenize,
    text_attack,
    vqa_accuracy,
)

EPS = 128 / 255  # the tiny LLaVA (saturated colours, a smooth tiny ViT) is fooled only by large budgets


@pytest.fixture(scope="module")
def adapter():
    model, processor = trained_tiny_llava()
    return LVLMAdapter(model, processor)


@pytest.fixture(scope="module")
def batch(adapter):
    x, colors = square_images(4, seed=7)
    prompts = [adapter.prompt(CAPTION_INSTRUCTION)] * 4
    return x, prompts, [caption_of(c) for c in colors]


# ---- the attack ----
def test_the_trained_tiny_llava_captions_and_answers(adapter, batch):
    x, prompts, refs = batch
    assert adapter.generate(x, prompts, 8) == refs
    _, colors = square_images(4, seed=7)
    vqa = [adapter.prompt(VQA_INSTRUCTION.format(question=QUESTION))] * 4
    assert adapter.generate(x, vqa, 2) == colors


def test_untargeted_attack_raises_the_loss_within_budget_and_range(adapter, batch):
    x, prompts, refs = batch
    with torch.no_grad():
        clean = adapter.loss(x, prompts, refs)
    x_adv, loss = text_attack(adapter, x, prompts, refs, eps=EPS, n_iter=10, seed=0, keys=list("abcd"))
    assert x_adv.dtype == torch.float32 and x_adv.shape == x.shape
    assert (x_adv - x).abs().max().item() <= EPS + 1e-6
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    with torch.no_grad():
        again = adapter.loss(x_adv, prompts, refs)
    assert torch.allclose(again, loss, atol=1e-4)  # the reported loss is the loss at the returned point
    assert (loss > clean).all() and loss.mean() > 5 * clean.mean(), (clean, loss)


def test_targeted_attack_lowers_the_targets_loss(adapter, batch):
    x, prompts, _ = batch
    target = ["a blue square on a white background"] * 4
    with torch.no_grad():
        clean = adapter.loss(x, prompts, target)
    _, loss = text_attack(adapter, x, prompts, target, eps=EPS, n_iter=10, seed=0, keys=list("abcd"), targeted=True)
    assert (loss <= clean + 1e-6).all() and (loss < clean).any()


def test_attack_is_seeded(adapter, batch):
    x, prompts, refs = batch
    kw = dict(eps=EPS, n_iter=3, keys=list("abcd"))
    a, _ = text_attack(adapter, x, prompts, refs, seed=1, **kw)
    b, _ = text_attack(adapter, x, prompts, refs, seed=1, **kw)
    c, _ = text_attack(adapter, x, prompts, refs, seed=2, **kw)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bf16_weights_keep_an_fp32_attack_state():
    model, processor = build_tiny_llava(image_size=16)
    adapter = LVLMAdapter(model.to(torch.bfloat16), processor)
    x, colors = square_images(2, seed=3)
    x = x.requires_grad_(True)
    loss = adapter.loss(x, [adapter.prompt(CAPTION_INSTRUCTION)] * 2, [caption_of(c) for c in colors])
    (grad,) = torch.autograd.grad(loss.sum(), [x])
    assert loss.dtype == torch.float32 and grad.dtype == torch.float32 and grad.abs().sum() > 0


def test_gradient_checkpointing_gives_the_same_loss_and_gradient():
    model, processor = build_tiny_llava(image_size=16, seed=3)
    x, colors = square_images(2, seed=3)
    refs = [caption_of(c) for c in colors]
    plain = LVLMAdapter(model, processor)
    prompts = [plain.prompt(CAPTION_INSTRUCTION)] * 2
    xa = x.clone().requires_grad_(True)
    la = plain.loss(xa, prompts, refs)
    (ga,) = torch.autograd.grad(la.sum(), [xa])
    checkpointed = LVLMAdapter(model, processor, gradient_checkpointing=True)
    calls = []
    for module in model.modules():
        if getattr(module, "gradient_checkpointing", False) and hasattr(module, "_gradient_checkpointing_func"):
            func = module._gradient_checkpointing_func
            module._gradient_checkpointing_func = lambda *a, _f=func, **k: calls.append(1) or _f(*a, **k)
    xb = x.clone().requires_grad_(True)
    lb = checkpointed.loss(xb, prompts, refs)
    (gb,) = torch.autograd.grad(lb.sum(), [xb])
    assert calls, "no layer was checkpointed"
    assert torch.allclose(la, lb, atol=1e-6) and torch.allclose(ga, gb, atol=1e-6)
    assert all(not m.training for m in model.modules())  # modes restored


def test_apgd_objective_maximises_any_per_sample_objective():
    x = torch.full((3, 3, 4, 4), 0.5)
    target = torch.zeros_like(x)

    def loss_fn(x_adv):  # distance to black: maximised at x + eps
        return ((x_adv - target) ** 2).flatten(1).sum(1)

    x_adv, best = apgd_objective(loss_fn, x, eps=0.1, n_iter=20)
    assert torch.allclose(x_adv, x + 0.1, atol=1e-6) and torch.allclose(best, loss_fn(x_adv))
    x0, l0 = apgd_objective(loss_fn, x, eps=0.0, n_iter=5)
    assert torch.equal(x0, x) and torch.allclose(l0, loss_fn(x))


# ---- metrics, hand-checked ----
def test_cider_hand_checked():
    # one reference each, N = 2: every n-gram of a reference has idf log(2) - log(1) = log 2.
    # exact match: cosine 1 for 1- and 2-grams, no 3-/4-grams: mean(1, 1, 0, 0) x 10 = 5 -> 500 (x100).
    # "red circle" vs "red square": 1-gram cosine (log2)^2 / (sqrt2 log2)^2 = 0.5: mean(0.5, 0, 0, 0) x 10 = 125.
    refs = [["red square"], ["blue circle"]]
    assert np.allclose(cider_scores(["red square", "green triangle"], refs), [500.0, 0.0])
    assert np.allclose(cider_scores(["Red circle.", "x"], refs), [125.0, 0.0])
    assert np.allclose(cider_scores(["RED, square!"], [["red square"]]), [0.0])  # N = 1: idf log(1) - log(1) = 0


def test_python_ptb_tokenization():
    assert ptb_tokenize("A dog's toy.") == "a dog 's toy"
    assert ptb_tokenize("A man (in red) is riding a bike, fast!") == "a man in red is riding a bike fast"
    assert ptb_tokenize("It isn't 3.5 m long...") == "it is n't 3.5 m long"
    assert ptb_tokenize("black-and-white photo -- old") == "black-and-white photo old"


def test_vqa_accuracy_rule():
    ten = lambda *groups: [a for n, a in groups for _ in range(n)]
    assert vqa_accuracy("yes", ten((10, "yes"))) == 1.0
    assert vqa_accuracy("yes", ten((3, "yes"), (7, "no"))) == pytest.approx(0.9)  # 3 x 2/3 + 7 x 1, over 10
    assert vqa_accuracy("yes", ten((2, "yes"), (8, "no"))) == pytest.approx(0.6)
    assert vqa_accuracy("yes", ten((1, "yes"), (9, "no"))) == pytest.approx(0.3)
    assert vqa_accuracy("maybe", ten((10, "yes"))) == 0.0
    assert vqa_accuracy("Two.", ten((4, "2"), (6, "3"))) == 1.0  # number words, punctuation
    assert vqa_accuracy("the dog", ten((10, "dog"))) == 1.0  # articles
    assert normalize_vqa_answer("dont") == "don't" and normalize_vqa_answer("1,000") == "1000"


# ---- data layouts ----
def test_data_layouts(tmp_path):
    cap_dir, vqa_dir = save_square_datasets(str(tmp_path), n=5)
    caps = load_lvlm_data(cap_dir, num_samples=3, seed=1)
    assert caps.task == "captioning" and caps.layout == "coco-captions" and len(caps) == 3 and caps.dataset_size == 5
    assert [s.sample_id for s in caps.samples] == [
        s.sample_id for s in load_lvlm_data(cap_dir, num_samples=3, seed=1).samples
    ]
    assert all(len(s.references) == 3 and os.path.isfile(s.image_path) for s in caps.samples)
    vqa = load_lvlm_data(vqa_dir, num_samples=None)
    assert vqa.task == "vqa" and vqa.layout == "vqav2" and len(vqa) == 5
    by_id = {s.sample_id: s for s in vqa.samples}
    assert by_id["100"].image_path.endswith("COCO_val2014_000000000000.png") and by_id["100"].question == QUESTION
    # Karpathy and TextVQA layouts
    karpathy = {
        "images": [
            {
                "filename": "0.png",
                "filepath": "images",
                "split": "test",
                "cocoid": 7,
                "sentences": [{"raw": "a red square"}],
            },
            {"filename": "1.png", "filepath": "images", "split": "train", "sentences": [{"raw": "x"}]},
        ]
    }
    path = os.path.join(cap_dir, "dataset_coco.json")
    json.dump(karpathy, open(path, "w"))
    k = load_lvlm_data(path)
    assert k.layout == "karpathy" and [s.sample_id for s in k.samples] == ["7"]
    textvqa = {
        "data": [{"question_id": 1, "image_id": "COCO_val2014_000000000002", "question": "q", "answers": ["a"] * 10}]
    }
    tpath = os.path.join(vqa_dir, "textvqa.json")
    json.dump(textvqa, open(tpath, "w"))
    t = load_lvlm_data(tpath)
    assert t.layout == "textvqa" and t.samples[0].image_path.endswith("000000000002.png")
    # errors name the file and the fix
    os.remove(os.path.join(cap_dir, "images", "0.png"))
    with pytest.raises(FileNotFoundError, match=r"image '0.png' \(id 0\) not found"):
        load_lvlm_data(cap_dir)
    with pytest.raises(FileNotFoundError, match="captions.json nor questions.json"):
        load_lvlm_data(str(tmp_path))


# ---- end to end ----
@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvlm_eval")
    model, processor = trained_tiny_llava()
    lvlm = save(str(root / "tiny-llava"), model, processor)
    cap_dir, vqa_dir = save_square_datasets(str(root), n=6)
    return root, lvlm, cap_dir, vqa_dir


SETTINGS = dict(
    eps=(4 / 255, EPS),
    n_iter=6,
    max_references=2,
    batch_size=3,
    num_samples=6,
    target_strings=("blue",),
    targeted_n_iter=6,
    targeted_num_samples=3,
)


@pytest.mark.slow
def test_evaluate_lvlm_end_to_end_and_resume(folders, tmp_path, monkeypatch):
    _, lvlm, cap_dir, vqa_dir = folders
    out = str(tmp_path / "full")
    report = evaluate_lvlm(
        [lvlm],
        [cap_dir, f"vqa={vqa_dir}"],
        output_dir=out,
        progress=False,
        verbose=False,
        protocol=LVLMProtocol(**SETTINGS),
    )
    by = {r["dataset"]: r for r in report["results"]}
    cap, vqa = by["squares_captions"], by["vqa"]
    assert cap["metric"] == "CIDEr" and vqa["metric"] == "VQA accuracy"
    # every clean reply is right: 9 of 10 annotators agree with it (or all 10), so each VQA accuracy is 1
    assert cap["clean"] > 100 and vqa["clean"] == pytest.approx(100.0)
    for r in (cap, vqa):  # the worst case is never better than clean, and the larger budget does real damage
        scores = [r["adversarial"][k]["score"] for k in ("4/255", "128/255")]
        assert scores[0] <= r["clean"] + 1e-9 and scores[1] <= scores[0] + 1e-9 and scores[1] < r["clean"]
        assert sum(r["adversarial"]["128/255"]["worst_attacks"].values()) == 6
        assert set(r["targeted"]["128/255"]) == {"blue"} and r["targeted"]["128/255"]["blue"]["num_samples"] == 3
    forced = vqa["targeted"]["128/255"]["blue"]
    assert forced["success_rate"] > forced["clean_rate"]  # the targeted attack makes the LVLM say "blue"
    for name in ("results.json", "results.md", "robustness.png"):
        assert os.path.isfile(os.path.join(out, name))
    md = open(os.path.join(out, "results.md")).read()
    assert "| tiny-llava | squares_captions | captioning | CIDEr | 6/6 |" in md
    full_states = {
        f: json.load(open(os.path.join(out, "lvlm_state", f))) for f in os.listdir(os.path.join(out, "lvlm_state"))
    }

    # an interrupted run resumes at the batch it stopped in and ends with the same replies and numbers
    out2 = str(tmp_path / "interrupted")
    calls = {"n": 0}
    original = LVLMAdapter.generate

    def crashing(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 12:  # in the second captioning batch (about 9 replies per batch)
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LVLMAdapter, "generate", crashing)
    with pytest.raises(KeyboardInterrupt):
        evaluate_lvlm(
            [lvlm],
            [cap_dir, f"vqa={vqa_dir}"],
            output_dir=out2,
            progress=False,
            verbose=False,
            protocol=LVLMProtocol(**SETTINGS),
        )
    monkeypatch.setattr(LVLMAdapter, "generate", original)
    partial = json.load(open(os.path.join(out2, "lvlm_state", "tiny-llava__squares_captions.json")))
    assert 0 < len(partial["samples"]) < 6
    generated = {"n": 0}

    def counting(self, *args, **kwargs):
        generated["n"] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(LVLMAdapter, "generate", counting)
    report2 = evaluate_lvlm(
        [lvlm],
        [cap_dir, f"vqa={vqa_dir}"],
        output_dir=out2,
        progress=False,
        verbose=False,
        protocol=LVLMProtocol(**SETTINGS),
    )
    assert 0 < generated["n"] < calls["n"] + 40  # the finished batch was not redone
    for f, state in full_states.items():
        assert json.load(open(os.path.join(out2, "lvlm_state", f))) == state
    strip = lambda rs: [
        {k: v for k, v in r.items() if k not in ("time_s", "seconds_per_sample", "model_source")} for r in rs
    ]
    assert strip(report2["results"]) == strip(report["results"])
    # a finished pair under the same protocol is skipped; another protocol is recomputed
    generated["n"] = 0
    evaluate_lvlm([lvlm], [cap_dir], output_dir=out2, progress=False, verbose=False, protocol=LVLMProtocol(**SETTINGS))
    assert generated["n"] == 0


def test_cli(folders, tmp_path, capsys):
    _, lvlm, cap_dir, _ = folders
    out = str(tmp_path / "cli")
    argv = [
        "--models",
        lvlm,
        "--datasets",
        cap_dir,
        "--output-dir",
        out,
        "--eps",
        "8/255",
        "--n-iter",
        "2",
        "--max-references",
        "1",
        "--num-samples",
        "3",
        "--batch-size",
        "3",
        "--no-refine",
        "--no-progress",
    ]
    assert eval_main(argv) == 0
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["protocol"]["eps_255"] == ["8/255"] and results["results"][0]["num_samples"] == 3
    space = results["results"][0]["attack_space"]  # LLaVA: the processor's 16 x 16 grid, one crop
    assert space["image_size"] == [16, 16] and space["crops"] == 1
    capsys.readouterr()
    assert eval_main(["--models", lvlm, "--datasets", str(tmp_path / "missing"), "--output-dir", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmt-ard-eval-lvlm: error: ") and "no such file or folder" in err[0]
    assert "missing" in err[0]


def test_unsupported_lvlm_for_evaluation(tmp_path, capsys):
    from mmt_ard.embedded.tiny import build_tiny_clip
    from mmt_ard.lvlm import LVLM_CLASSES

    not_an_lvlm = save(str(tmp_path / "clip"), *build_tiny_clip(hidden=32, layers=1, heads=2))
    cap_dir, _ = save_square_datasets(str(tmp_path), n=2)
    out = tmp_path / "o"
    capsys.readouterr()
    assert eval_main(["--models", not_an_lvlm, "--datasets", cap_dir, "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mmt-ard-eval-lvlm: error: ") and "CLIPModel" in err[0]
    assert all(name in err[0] for name in LVLM_CLASSES)  # the supported classes, listed
    assert not out.exists()  # nothing written


def test_bad_images_follow_bad_samples(tmp_path, capsys):
    """A truncated file stops the run naming it (exit 1), or is left out with `--bad-samples skip`; grayscale and
    CMYK images are converted to RGB as the processors do."""
    from PIL import Image

    lvlm = save(str(tmp_path / "llava"), *build_tiny_llava(image_size=16))
    cap_dir, _ = save_square_datasets(str(tmp_path), n=4)
    images = os.path.join(cap_dir, "images")
    Image.open(os.path.join(images, "0.png")).convert("L").save(os.path.join(images, "0.png"))
    Image.open(os.path.join(images, "1.png")).convert("CMYK").save(os.path.join(images, "1.jpg"))
    with open(os.path.join(cap_dir, "captions.json")) as f:
        captions = json.load(f)
    captions["images"][1]["file_name"] = "1.jpg"
    with open(os.path.join(cap_dir, "captions.json"), "w") as f:
        json.dump(captions, f)
    data = open(os.path.join(images, "2.png"), "rb").read()
    with open(os.path.join(images, "2.png"), "wb") as f:
        f.write(data[: len(data) // 2])  # truncated
    argv = ["--models", lvlm, "--datasets", cap_dir, "--eps", "8/255", "--n-iter", "1", "--max-references", "1"]
    argv += ["--no-refine", "--no-progress"]
    capsys.readouterr()
    assert eval_main([*argv, "--output-dir", str(tmp_path / "stop")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "2.png" in err[0] and "--bad-samples skip" in err[0], err
    assert eval_main([*argv, "--output-dir", str(tmp_path / "skip"), "--bad-samples", "skip"]) == 0
    result = json.load(open(tmp_path / "skip" / "results.json"))["results"][0]
    assert result["num_samples"] == 3 and list(result["skipped"]) == ["2"]
