"""A tiny SmolVLM (Idefics3 architecture) with random weights, saved as a real model directory (test helper).

Same architecture and on-disk layout as `HuggingFaceTB/SmolVLM-256M-Instruct` (config.json, model.safetensors, an
Idefics3Processor with its image processor, a fast tokenizer holding the image and turn tokens, and a chat
template), only small: built here, no hub. Its captions are random words of the vocabulary below, so tests check
plumbing, never quality.
"""

from __future__ import annotations

from pathlib import Path

SPECIALS = ["<unk>", "<|im_start|>", "<end_of_utterance>", "<fake_token_around_image>", "<image>", "<global-img>"]
WORDS = [
    "User", "Assistant", ":", ".", ",", "describe", "each", "one", "sentence", "per", "from", "left", "to", "right",
    "a", "the", "man", "woman", "boy", "girl", "person", "people", "in", "with", "and", "his", "her", "suit", "dress",
    "smiling", "standing", "red", "blue", "black", "hair", "beard", "glasses", "photo", "of", "is", "wearing",
]
IMAGE_SIZE = 32  # the vision encoder's input side; 8-pixel patches, 2x2 pixel shuffle: 4 image tokens an image
# SmolVLM's chat template: "User:<image>text<end_of_utterance>\nAssistant:"
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for line in message['content'] %}{% if line['type'] == 'text' %}{{ line['text'] }}"
    "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_tiny_smolvlm(folder: Path, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import (Idefics3Config, Idefics3ForConditionalGeneration, Idefics3ImageProcessor,
                              Idefics3Processor, PreTrainedTokenizerFast)

    folder.mkdir(parents=True, exist_ok=True)
    vocab = {token: index for index, token in enumerate(SPECIALS + WORDS)}
    model = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=model, unk_token="<unk>", bos_token="<|im_start|>", eos_token="<end_of_utterance>",
        pad_token="<unk>", additional_special_tokens=SPECIALS[2:],
    )
    images = Idefics3ImageProcessor(do_image_splitting=False, size={"longest_edge": IMAGE_SIZE},
                                    max_image_size={"longest_edge": IMAGE_SIZE})
    processor = Idefics3Processor(image_processor=images, tokenizer=tokenizer, image_seq_len=4,
                                  chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(folder)

    torch.manual_seed(seed)
    layers = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
    config = Idefics3Config(
        vision_config={**layers, "image_size": IMAGE_SIZE, "patch_size": 8},
        text_config={**layers, "model_type": "llama", "vocab_size": len(vocab), "num_key_value_heads": 2,
                     "max_position_embeddings": 256, "bos_token_id": vocab["<|im_start|>"],
                     "eos_token_id": vocab["<end_of_utterance>"], "pad_token_id": 0},
        scale_factor=2, image_token_id=vocab["<image>"], pad_token_id=0,
    )
    Idefics3ForConditionalGeneration(config).save_pretrained(folder)
    return folder
