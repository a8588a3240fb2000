"""Construction of the diffusers / transformers components of the shapes model."""
from __future__ import annotations

import json
from pathlib import Path

from .world import VOCAB_WORDS

MAX_LENGTH = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _bpe(symbols: list[str], ranks: dict) -> list[str]:
    word = list(symbols)
    while len(word) > 1:
        pairs = [(ranks.get((a, b), 1 << 30), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
        r, i = min(pairs)
        if r == 1 << 30:
            break
        a, b = word[i], word[i + 1]
        new, j = [], 0
        while j < len(word):
            if j < len(word) - 1 and word[j] == a and word[j + 1] == b:
                new.append(a + b)
                j += 2
            else:
                new.append(word[j])
                j += 1
        word = new
    return word


def build_tokenizer_files(folder: Path, words=VOCAB_WORDS, max_length: int = MAX_LENGTH) -> None:
    """Write vocab.json / merges.txt / configs for a CLIPTokenizer whose every vocabulary word is one token.

    The vocabulary also holds all 256 byte symbols (plain and with ``</w>``) so any text tokenises.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    b2u = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}

    def add(tok):
        if tok not in vocab:
            vocab[tok] = len(vocab)

    for t in b2u:
        add(t)
    for t in b2u:
        add(t + "</w>")
    merges: list[tuple[str, str]] = []
    ranks: dict = {}
    for w in words:
        syms = list(w[:-1]) + [w[-1] + "</w>"]
        while True:
            toks = _bpe(syms, ranks)
            if len(toks) == 1:
                break
            pair = (toks[0], toks[1])
            ranks[pair] = len(merges)
            merges.append(pair)
            add(pair[0] + pair[1])
    add(BOS)
    add(EOS)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8"
    )
    (folder / "special_tokens_map.json").write_text(
        json.dumps({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS})
    )
    (folder / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "CLIPTokenizer",
                "model_max_length": max_length,
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": EOS,
                "unk_token": EOS,
                "do_lower_case": True,
                "clean_up_tokenization_spaces": False,
            }
        )
    )


def load_tokenizer(folder):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(folder))


def make_text_encoder(tokenizer, hidden: int = 64, layers: int = 2, heads: int = 2):
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=tokenizer.model_max_length,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        projection_dim=hidden,
    )
    return CLIPTextModel(cfg)


def make_vae(channels=(32, 64, 64)):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(channels),
        up_block_types=("UpDecoderBlock2D",) * len(channels),
        block_out_channels=tuple(channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(16, min(channels)),
        sample_size=64,
        mid_block_add_attention=False,  # fully convolutional: trained on random crops
    )


def make_unet(channels=(32, 64, 64), cross_dim: int = 64, heads: int = 4):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        # no attention at 16x16 (too slow on CPU); cross-attention at 8x8 and 4x4
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(channels) - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (len(channels) - 1) + ("UpBlock2D",),
        block_out_channels=tuple(channels),
        layers_per_block=1,
        cross_attention_dim=cross_dim,
        attention_head_dim=heads,  # (diffusers' name for the number of heads)
        norm_num_groups=16,
    )


def make_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="epsilon",
    )
