"""A tiny BLIP captioning model with random weights, saved as a real model directory (test helper).

Same architecture and on-disk format as `Salesforce/blip-image-captioning-large` (config.json,
model.safetensors, BlipProcessor files with a WordPiece vocabulary), only small: its captions are
random words from the vocabulary below, so tests check plumbing, never quality.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
WORDS = [
    "a", "picture", "photo", "of", "man", "woman", "boy", "girl", "person", "guy", "lady", "men", "women", "people",
    "in", "the", "with", "and", "her", "his", "suit", "shirt", "red", "blue", "black", "smiling", "standing",
    "sitting", "posing", "front", "wall", "tree", "car", "dog", "street", "stage",
]
IMAGE_SIZE = 32


def build_tiny_blip(folder: Path, seed: int = 0) -> Path:
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True, exist_ok=True)
    vocab = folder / "wordpiece.txt"
    vocab.write_text("\n".join(SPECIALS + WORDS) + "\n")
    tokenizer = BertTokenizer(str(vocab), bos_token="[DEC]")
    images = BlipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    BlipProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    vocab.unlink()  # the saved tokenizer.json holds it

    ids = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    text = {**layers, "vocab_size": len(ids), "encoder_hidden_size": 32, "max_position_embeddings": 64,
            "bos_token_id": ids["[DEC]"], "eos_token_id": ids["[SEP]"], "sep_token_id": ids["[SEP]"], "pad_token_id": 0}
    vision = {**layers, "image_size": IMAGE_SIZE, "patch_size": 8}
    torch.manual_seed(seed)
    config = BlipConfig(text_config=text, vision_config=vision, projection_dim=32, image_text_hidden_size=32)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    return folder
