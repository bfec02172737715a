"""Known datasets: class names, prompt templates and Hub copies of the usual zero-shot sets (data, not code).

The data layer (`mmt_ard.data.open_image_source`) looks a dataset up here by name (`known_dataset`): a file
`cifar10.parquet`, `cifar10_test.parquet`, a sidecar naming "CIFAR-10", or the short name `cifar10` all find the
`cifar10` entry, which supplies class names when the data carry none, and the prompt ensemble of the evaluation.

The templates are OpenAI CLIP's zero-shot prompts (Radford et al., 2021, "Prompt engineering and ensembling"), in the
per-dataset form the CLIP benchmark uses; `{}` marks the class name. The built-in class names cover the sets whose
Hub copies carry no usable names (CIFAR, STL-10, EuroSAT and PCam use CLIP's descriptive names); the others come
from the dataset itself (a `ClassLabel`, or the `classnames.txt` of a clip-benchmark repository) or from a user
JSON file.
"""

from __future__ import annotations

import re

DEFAULT_TEMPLATES = ("a photo of a {}.",)

_CIFAR = (
    "a photo of a {}.",
    "a blurry photo of a {}.",
    "a black and white photo of a {}.",
    "a low contrast photo of a {}.",
    "a high contrast photo of a {}.",
    "a bad photo of a {}.",
    "a good photo of a {}.",
    "a photo of a small {}.",
    "a photo of a big {}.",
    "a photo of the {}.",
    "a blurry photo of the {}.",
    "a black and white photo of the {}.",
    "a low contrast photo of the {}.",
    "a high contrast photo of the {}.",
    "a bad photo of the {}.",
    "a good photo of the {}.",
    "a photo of the small {}.",
    "a photo of the big {}.",
)

# OpenAI's 80 ImageNet templates
_IMAGENET = (
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
)

_CALTECH101 = (
    "a photo of a {}.",
    "a painting of a {}.",
    "a plastic {}.",
    "a sculpture of a {}.",
    "a sketch of a {}.",
    "a tattoo of a {}.",
    "a toy {}.",
    "a rendition of a {}.",
    "a embroidered {}.",
    "a cartoon {}.",
    "a {} in a video game.",
    "a plushie {}.",
    "a origami {}.",
    "art of a {}.",
    "graffiti of a {}.",
    "a drawing of a {}.",
    "a doodle of a {}.",
    "a photo of the {}.",
    "a painting of the {}.",
    "the plastic {}.",
    "a sculpture of the {}.",
    "a sketch of the {}.",
    "a tattoo of the {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "the embroidered {}.",
    "the cartoon {}.",
    "the {} in a video game.",
    "the plushie {}.",
    "the origami {}.",
    "art of the {}.",
    "graffiti of the {}.",
    "a drawing of the {}.",
    "a doodle of the {}.",
)

TEMPLATES: dict[str, tuple[str, ...]] = {
    "imagenet": _IMAGENET,
    "imagenet-r": _IMAGENET,
    "imagenet-sketch": _IMAGENET,
    "cifar10": _CIFAR,
    "cifar100": _CIFAR,
    "stl10": ("a photo of a {}.", "a photo of the {}."),
    "cars": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a photo of my {}.",
        "i love my {}!",
        "a photo of my dirty {}.",
        "a photo of my clean {}.",
        "a photo of my new {}.",
        "a photo of my old {}.",
    ),
    "caltech101": _CALTECH101,
    "pets": ("a photo of a {}, a type of pet.",),
    "flowers": ("a photo of a {}, a type of flower.",),
    "food101": ("a photo of {}, a type of food.",),
    "sun397": ("a photo of a {}.", "a photo of the {}."),
    "dtd": (
        "a photo of a {} texture.",
        "a photo of a {} pattern.",
        "a photo of a {} thing.",
        "a photo of a {} object.",
        "a photo of the {} texture.",
        "a photo of the {} pattern.",
        "a photo of the {} thing.",
        "a photo of the {} object.",
    ),
    "eurosat": (
        "a centered satellite photo of {}.",
        "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    ),
    "fgvc_aircraft": ("a photo of a {}, a type of aircraft.", "a photo of the {}, a type of aircraft."),
    "pcam": ("a histopathology slide showing {}", "histopathology image of {}"),
    "mnist": ('a photo of the number: "{}".',),
}

CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    "cifar100": (
        "apple",
        "aquarium_fish",
        "baby",
        "bear",
        "beaver",
        "bed",
        "bee",
        "beetle",
        "bicycle",
        "bottle",
        "bowl",
        "boy",
        "bridge",
        "bus",
        "butterfly",
        "camel",
        "can",
        "castle",
        "caterpillar",
        "cattle",
        "chair",
        "chimpanzee",
        "clock",
        "cloud",
        "cockroach",
        "couch",
        "crab",
        "crocodile",
        "cup",
        "dinosaur",
        "dolphin",
        "elephant",
        "flatfish",
        "forest",
        "fox",
        "girl",
        "hamster",
        "house",
        "kangaroo",
        "keyboard",
        "lamp",
        "lawn_mower",
        "leopard",
        "lion",
        "lizard",
        "lobster",
        "man",
        "maple_tree",
        "motorcycle",
        "mountain",
        "mouse",
        "mushroom",
        "oak_tree",
        "orange",
        "orchid",
        "otter",
        "palm_tree",
        "pear",
        "pickup_truck",
        "pine_tree",
        "plain",
        "plate",
        "poppy",
        "porcupine",
        "possum",
        "rabbit",
        "raccoon",
        "ray",
        "road",
        "rocket",
        "rose",
        "sea",
        "seal",
        "shark",
        "shrew",
        "skunk",
        "skyscraper",
        "snail",
        "snake",
        "spider",
        "squirrel",
        "streetcar",
        "sunflower",
        "sweet_pepper",
        "table",
        "tank",
        "telephone",
        "television",
        "tiger",
        "tractor",
        "train",
        "trout",
        "tulip",
        "turtle",
        "wardrobe",
        "whale",
        "willow_tree",
        "wolf",
        "woman",
        "worm",
    ),
    "stl10": ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"),
    "eurosat": (
        "annual crop land",
        "forest",
        "brushland or shrubland",
        "highway or road",
        "industrial buildings or commercial buildings",
        "pasture land",
        "permanent crop land",
        "residential buildings or homes or apartments",
        "river",
        "lake or sea",
    ),
    "pcam": ("lymph node", "lymph node containing metastatic tumor tissue"),
    "mnist": ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9"),
}

# short name -> Hub repository of the clip-benchmark WebDataset collection (images + `cls`, with classnames.txt and
# zeroshot_classification_templates.txt at the repository root), test split
HUB_IDS: dict[str, str] = {
    "imagenet": "clip-benchmark/wds_imagenet1k",
    "cifar10": "clip-benchmark/wds_cifar10",
    "cifar100": "clip-benchmark/wds_vtab-cifar100",
    "stl10": "clip-benchmark/wds_stl10",
    "cars": "clip-benchmark/wds_cars",
    "caltech101": "clip-benchmark/wds_vtab-caltech101",
    "pets": "clip-benchmark/wds_vtab-pets",
    "flowers": "clip-benchmark/wds_vtab-flowers",
    "dtd": "clip-benchmark/wds_vtab-dtd",
    "eurosat": "clip-benchmark/wds_vtab-eurosat",
    "fgvc_aircraft": "clip-benchmark/wds_fgvc_aircraft",
    "pcam": "clip-benchmark/wds_vtab-pcam",
    "imagenet-r": "clip-benchmark/wds_imagenet-r",
    "imagenet-sketch": "clip-benchmark/wds_imagenet_sketch",
    "sun397": "clip-benchmark/wds_sun397",
    "food101": "clip-benchmark/wds_food101",
    "mnist": "clip-benchmark/wds_mnist",
}


def normalize_template(template: str) -> str:
    """Accept the clip-benchmark `{c}` placeholder as well as `{}`."""
    return template.replace("{c}", "{}")


# split words that local copies append to a dataset's name (`cifar10_test.parquet`, `imagenette-val`)
_SPLIT_SUFFIX = re.compile(r"[-_. ](train|test|testing|val|valid|validation|eval)$", re.IGNORECASE)


def _squash(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def known_dataset(name: str | None) -> str | None:
    """The key of the built-in tables a dataset name refers to, or None.

    Matches the key itself (`cifar10`), its clip-benchmark Hub id (`clip-benchmark/wds_vtab-pets` -> `pets`), the key
    with a split word appended (`cifar10_test`), and spellings that differ in case and punctuation (`CIFAR-10`).
    """
    if not name:
        return None
    keys = set(TEMPLATES) | set(HUB_IDS) | set(CLASS_NAMES)
    if name in keys:
        return name
    for key, hub_id in HUB_IDS.items():
        if name == hub_id:
            return key
    squashed = {_squash(k): k for k in keys}
    for candidate in (name, _SPLIT_SUFFIX.sub("", name)):
        if _squash(candidate) in squashed:
            return squashed[_squash(candidate)]
    return None
