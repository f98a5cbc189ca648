"""Datasets for hysac: the shared text data (I2P, COCO captions, safe art prompts), ViSU, OpenMoji images,
quadruplet building and a generic table reader. See each submodule's docstring."""

from hysac.data.categories import (
    CATEGORIES,
    categories_to_multihot,
    multihot_to_categories,
    normalize_category,
    parse_categories,
    split_categories,
)
from hysac.data.openmoji import (
    UNSAFE_EMOJI,
    emoji_caption,
    emoji_categories,
    list_openmoji,
    load_openmoji_manifest,
    openmoji_cache_dir,
    render_openmoji,
)
from hysac.data.paths import default_cache_dir, default_data_dir, resolve_data_file
from hysac.data.quadruplets import (
    Quadruplet,
    Quadruplets,
    build_quadruplets,
    pair_nearest,
    quadruplets_from_visu,
)
from hysac.data.tables import read_table
from hysac.data.text import (
    TextExample,
    TextSplits,
    clean_text,
    load_coco_captions,
    load_i2p,
    load_ldnoobw,
    load_safe_art_prompts,
    split_indices,
    text_safety_splits,
)
from hysac.data.visu import ViSUDataset, coco_image_path, open_image

__all__ = [
    "CATEGORIES",
    "UNSAFE_EMOJI",
    "Quadruplet",
    "Quadruplets",
    "TextExample",
    "TextSplits",
    "ViSUDataset",
    "build_quadruplets",
    "categories_to_multihot",
    "clean_text",
    "coco_image_path",
    "default_cache_dir",
    "default_data_dir",
    "emoji_caption",
    "emoji_categories",
    "list_openmoji",
    "load_coco_captions",
    "load_i2p",
    "load_ldnoobw",
    "load_openmoji_manifest",
    "load_safe_art_prompts",
    "multihot_to_categories",
    "normalize_category",
    "open_image",
    "openmoji_cache_dir",
    "pair_nearest",
    "parse_categories",
    "quadruplets_from_visu",
    "read_table",
    "render_openmoji",
    "resolve_data_file",
    "split_categories",
    "split_indices",
    "text_safety_splits",
]
