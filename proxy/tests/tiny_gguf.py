"""Write a tiny llama-architecture GGUF: seeded random weights, a real tokenizer, a ChatML template.

Run it with .venv-llama's python (`make llama`), which has `gguf` and numpy:
`.venv-llama/bin/python proxy/tests/tiny_gguf.py VOCAB.gguf OUT.gguf`. VOCAB is one of
llama.cpp's vocabulary-only files (models/ggml-vocab-*.gguf in the llama-cpp-python sdist):
its `tokenizer.*` keys are copied, so prompts are tokenized as by a real model, without
downloading one. The weights are noise: the model answers, but says nothing in particular.
"""

import argparse
import sys

import gguf
import numpy as np

ARCH = "llama"
# Small enough to load in a blink and answer a token in microseconds on one thread.
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2  # grouped-query attention, as most current llama-family models have
N_FF = 128
N_LAYER = 2
N_CTX_TRAIN = 2048
RMS_EPS = 1e-5
WEIGHT_SCALE = 0.02
# A large output projection sets the next token's logits far apart, so that greedy decoding
# picks the same token on every run despite float rounding; its own matrix (not tied to the
# embeddings, which would make the model repeat its last token) gives varied text.
OUTPUT_SCALE = 1.0
# A plain ChatML template, rendered by llama-cpp-python with Jinja2 ("chat_template.default").
# It joins strings, as many models' own templates do: content that is not a string fails.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def tokenizer_fields(vocab_path: str) -> list[tuple[str, object, gguf.GGUFValueType, object]]:
    """(key, value, type, array element type) of every `tokenizer.*` key of a GGUF file."""
    reader = gguf.GGUFReader(vocab_path)
    fields = []
    for key, field in reader.fields.items():
        if not key.startswith("tokenizer."):
            continue
        vtype = field.types[0]
        sub_type = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        fields.append((key, field.contents(), vtype, sub_type))
    return fields


def write_tiny_model(vocab_path: str, out_path: str, seed: int = 0) -> None:
    """Write the tiny model to `out_path`, with the tokenizer of `vocab_path`."""
    fields = tokenizer_fields(vocab_path)
    tokens = next(value for key, value, _, _ in fields if key == "tokenizer.ggml.tokens")
    n_vocab = len(tokens)
    rng = np.random.default_rng(seed)

    def noise(*shape: int, scale: float = WEIGHT_SCALE) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    head_dim = N_EMBD // N_HEAD
    writer = gguf.GGUFWriter(out_path, ARCH)
    writer.add_name("aethergate-tiny")
    writer.add_context_length(N_CTX_TRAIN)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD_KV)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    for key, value, vtype, sub_type in fields:
        if key != "tokenizer.chat_template":
            writer.add_key_value(key, value, vtype, sub_type)
    writer.add_chat_template(CHAT_TEMPLATE)

    # numpy shapes are (rows, columns): ggml's dimensions reversed.
    writer.add_tensor("token_embd.weight", noise(n_vocab, N_EMBD))
    writer.add_tensor("output_norm.weight", ones(N_EMBD))
    writer.add_tensor("output.weight", noise(n_vocab, N_EMBD, scale=OUTPUT_SCALE))
    for layer in range(N_LAYER):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"{block}.attn_q.weight", noise(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.attn_k.weight", noise(N_HEAD_KV * head_dim, N_EMBD))
        writer.add_tensor(f"{block}.attn_v.weight", noise(N_HEAD_KV * head_dim, N_EMBD))
        writer.add_tensor(f"{block}.attn_output.weight", noise(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.ffn_norm.weight", ones(N_EMBD))
        writer.add_tensor(f"{block}.ffn_gate.weight", noise(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_up.weight", noise(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_down.weight", noise(N_EMBD, N_FF))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vocab", help="a vocabulary-only GGUF (llama.cpp's models/ggml-vocab-*)")
    parser.add_argument("out", help="where to write the model")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights")
    args = parser.parse_args(argv)
    write_tiny_model(args.vocab, args.out, args.seed)


if __name__ == "__main__":
    main(sys.argv[1:])
