"""Write a random 1B-class llama-shaped GGUF (Q8_0) for scaling benchmarks.

Shape: hidden 2048, 16 layers, intermediate 8192, 32 query / 8 key-value heads, vocab 32000
(~1.1 B parameters, ~1.2 GB). Weights are random Q8_0 blocks (text is meaningless; speed is
what it is for); the vocabulary is synthetic SentencePiece-style pieces so both edgerope and
llama.cpp load it.

    python bench/make_1b.py [OUT.gguf]      (default: weights/random-1b.q8_0.gguf)
    python bench/make_1b.py --safetensors [OUT_DIR]   (default: weights/random-1b-hf)

The safetensors variant is a Hugging Face llama directory (config.json + float16
model.safetensors, weights N(0, 0.02), ~2.2 GB): edgerope quantizes it at load, transformers
runs it directly. No tokenizer files (bench feeds token ids).
"""
from __future__ import annotations

import os
import sys

import numpy as np

H, L, FF, NH, NKV, V = 2048, 16, 8192, 32, 8, 32000


def q8_0_blocks(rng, rows, cols):
    """Random Q8_0 rows: per 32 values a float16 scale then 32 int8 (34 bytes)."""
    nb = cols // 32
    out = np.empty((rows, nb, 34), np.uint8)
    out[:, :, :2] = np.full((rows, nb), 0.02 / 127, np.float16).view(np.uint8).reshape(rows, nb, 2)
    out[:, :, 2:] = rng.integers(-127, 128, (rows, nb, 32), dtype=np.int8).view(np.uint8)
    return out.reshape(rows, nb * 34)


def main(path):
    import gguf
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, "llama")
    w.add_name("random-1b")
    w.add_context_length(4096)
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(FF)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_rope_dimension_count(H // NH)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(7)  # MOSTLY_Q8_0
    w.add_tokenizer_model("llama")
    toks = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    toks += [f"\u2581t{i}" for i in range(V - len(toks))]
    w.add_token_list(toks)
    w.add_token_scores([0.0] * 3 + [0.0] * 256 + [-float(i) for i in range(V - 259)])
    w.add_token_types([2, 3, 3] + [6] * 256 + [1] * (V - 259))
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    q8 = gguf.GGMLQuantizationType.Q8_0

    def mat(name, rows, cols):
        data = q8_0_blocks(rng, rows, cols)
        w.add_tensor(name, data, raw_shape=data.shape, raw_dtype=q8)  # byte shape

    def vec(name, n):
        w.add_tensor(name, np.ones(n, np.float32))

    mat("token_embd.weight", V, H)
    vec("output_norm.weight", H)
    mat("output.weight", V, H)
    kv = H // NH * NKV
    for i in range(L):
        p = f"blk.{i}."
        vec(p + "attn_norm.weight", H)
        vec(p + "ffn_norm.weight", H)
        mat(p + "attn_q.weight", H, H)
        mat(p + "attn_k.weight", kv, H)
        mat(p + "attn_v.weight", kv, H)
        mat(p + "attn_output.weight", H, H)
        mat(p + "ffn_gate.weight", FF, H)
        mat(p + "ffn_up.weight", FF, H)
        mat(p + "ffn_down.weight", H, FF)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(path, os.path.getsize(path) // 2**20, "MiB")


def main_safetensors(out):
    import json

    from safetensors.numpy import save_file
    rng = np.random.default_rng(0)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols), np.float32) * 0.02).astype(np.float16)

    kv = H // NH * NKV
    t = {"model.embed_tokens.weight": mat(V, H), "lm_head.weight": mat(V, H),
         "model.norm.weight": np.ones(H, np.float16)}
    for i in range(L):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = np.ones(H, np.float16)
        t[p + "post_attention_layernorm.weight"] = np.ones(H, np.float16)
        for name, rows, cols in (("self_attn.q_proj", H, H), ("self_attn.k_proj", kv, H),
                                 ("self_attn.v_proj", kv, H), ("self_attn.o_proj", H, H),
                                 ("mlp.gate_proj", FF, H), ("mlp.up_proj", FF, H),
                                 ("mlp.down_proj", H, FF)):
            t[p + name + ".weight"] = mat(rows, cols)
    os.makedirs(out, exist_ok=True)
    save_file(t, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    cfg = dict(architectures=["LlamaForCausalLM"], model_type="llama", hidden_size=H,
               intermediate_size=FF, num_hidden_layers=L, num_attention_heads=NH,
               num_key_value_heads=NKV, vocab_size=V, max_position_embeddings=4096,
               rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu",
               tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
               torch_dtype="float16")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    print(out, os.path.getsize(os.path.join(out, "model.safetensors")) // 2**20, "MiB")


if __name__ == "__main__":
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights")
    args = sys.argv[1:]
    if args[:1] == ["--safetensors"]:
        main_safetensors(args[1] if len(args) > 1 else os.path.join(here, "random-1b-hf"))
    else:
        main(args[0] if args else os.path.join(here, "random-1b.q8_0.gguf"))
