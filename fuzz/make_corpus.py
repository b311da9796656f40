#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora, fuzz/corpus/<target>/, from real files:
the bundled model (models/pikv-ref-14m) and ../shared/fixtures. Each seed is a
small, valid (or nearly valid) input, so that the fuzzers start from the
structures the parsers really see. Run from the repository root."""
import json
import os
import struct
import sys

MODEL = "models/pikv-ref-14m"
SHARED = os.environ.get("PIKV_SHARED", "../shared")
OUT = "fuzz/corpus"


def write(target, name, data):
    """Write one seed file (bytes or text)."""
    os.makedirs(os.path.join(OUT, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(OUT, target, name), "wb") as f:
        f.write(data)


def read_safetensors(path):
    """The header and the data region of a safetensors file."""
    with open(path, "rb") as f:
        blob = f.read()
    n = struct.unpack("<Q", blob[:8])[0]
    return json.loads(blob[8:8 + n]), blob[8 + n:]


def tensor_bytes(header, data, name):
    begin, end = header[name]["data_offsets"]
    return data[begin:end]


def safetensors(entries, metadata=None):
    """A safetensors image from (name, dtype, shape, bytes) entries."""
    header, blobs, offset = {}, [], 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in entries:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def safetensors_seeds():
    header, data = read_safetensors(os.path.join(MODEL, "model.safetensors"))
    ln_f = [(n, header[n]["dtype"], header[n]["shape"], tensor_bytes(header, data, n))
            for n in ("transformer.ln_f.weight", "transformer.ln_f.bias")]
    write("fuzz_safetensors", "bundled_ln_f_f16.safetensors", safetensors(ln_f, {"format": "pt"}))

    header, data = read_safetensors(os.path.join(SHARED, "fixtures/tiny-gpt2/model.safetensors"))
    small = [(n, header[n]["dtype"], header[n]["shape"], tensor_bytes(header, data, n))
             for n in ("h.0.ln_1.weight", "h.0.ln_1.bias", "h.0.attn.c_proj.bias", "h.0.attn.c_attn.bias")]
    write("fuzz_safetensors", "tiny_gpt2_layer0_bf16.safetensors", safetensors(small, {"format": "pt"}))

    # The first 32 keys of the golden layer-0 cache in every dtype the parser knows.
    header, data = read_safetensors(os.path.join(SHARED, "fixtures/golden_shared.safetensors"))
    values = struct.unpack("<32f", tensor_bytes(header, data, "k0_0")[:128])
    ids = json.load(open(os.path.join(SHARED, "fixtures/tokenizer_golden.json")))["reference"][2]["ids"]
    mixed = [
        ("k_f32", "F32", [2, 16], struct.pack("<32f", *values)),
        ("k_f64", "F64", [4, 2, 4], struct.pack("<32d", *values)),
        ("k_f16", "F16", [32], struct.pack("<32e", *values)),
        ("k_bf16", "BF16", [1, 32], b"".join(struct.pack("<f", v)[2:] for v in values)),
        ("ids_i64", "I64", [len(ids)], struct.pack("<%dq" % len(ids), *ids)),
        ("ids_i32", "I32", [len(ids)], struct.pack("<%di" % len(ids), *ids)),
        ("ids_i16", "I16", [len(ids)], struct.pack("<%dh" % len(ids), *ids)),
        ("low_i8", "I8", [4], bytes([1, 255, 3, 128])),
        ("mask_bool", "BOOL", [4], bytes([1, 0, 0, 1])),
        ("bytes_u8", "U8", [2, 2], bytes([0, 1, 254, 255])),
        ("empty", "F32", [0, 16], b""),
    ]
    write("fuzz_safetensors", "golden_all_dtypes.safetensors", safetensors(mixed))
    write("fuzz_safetensors", "metadata_only.safetensors", safetensors([], {"format": "pt"}))

    # Headers that would load other weights than they name (both refused): a
    # tensor listed twice, and a name with an escaped NUL shadowing a real one.
    one = struct.pack("<f", 1.0)
    text = ('{"wte.weight":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
            '"wte.weight":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}}').encode()
    write("fuzz_safetensors", "duplicate_name.safetensors", struct.pack("<Q", len(text)) + text + one + one)
    text = '{"wte.weight\\u0000x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}'.encode()
    write("fuzz_safetensors", "nul_in_name.safetensors", struct.pack("<Q", len(text)) + text + one)


def config_seeds():
    write("fuzz_config", "bundled_config.json", open(os.path.join(MODEL, "config.json")).read())
    tiny = open(os.path.join(SHARED, "fixtures/tiny-gpt2/config.json")).read()
    write("fuzz_config", "tiny_gpt2_config.json", tiny)
    variant = json.loads(tiny)
    variant["n_ctx"] = variant.pop("n_positions", 1024)
    variant.update(n_inner=96, eos_token_id=[0, 1], scale_attn_by_inverse_layer_idx=True,
                   layer_norm_epsilon=1e-6, activation_function="gelu_pytorch_tanh")
    write("fuzz_config", "tiny_gpt2_variant.json", json.dumps(variant, indent=1))
    write("fuzz_config", "generation_config.json", open(os.path.join(MODEL, "generation_config.json")).read())


def tokenizer_files_seeds():
    vocab = json.load(open(os.path.join(MODEL, "vocab.json"), encoding="utf-8"))
    lines = open(os.path.join(MODEL, "merges.txt"), encoding="utf-8").read().split("\n")
    merges = [line for line in lines[1:41] if line]
    keep = {t for t, i in vocab.items() if i <= 256}
    for m in merges:
        left, right = m.split(" ")
        keep.add(left + right)
    small_vocab = json.dumps({t: vocab[t] for t in sorted(keep, key=vocab.get)},
                             ensure_ascii=False, separators=(",", ":"))
    small_merges = "\n".join([lines[0]] + merges) + "\n"
    full = json.load(open(os.path.join(MODEL, "tokenizer.json"), encoding="utf-8"))
    added = json.dumps({"version": full["version"], "added_tokens": full["added_tokens"]}, indent=1)
    config = open(os.path.join(MODEL, "tokenizer_config.json")).read()
    parts = [small_vocab, small_merges]
    write("fuzz_tokenizer_files", "vocab_merges", "\0".join(parts))
    write("fuzz_tokenizer_files", "vocab_merges_tokenizer_json", "\0".join(parts + [added]))
    write("fuzz_tokenizer_files", "vocab_merges_tokenizer_config", "\0".join(parts + ["", config]))


def tokenize_seeds():
    golden = json.load(open(os.path.join(SHARED, "fixtures/tokenizer_golden.json"), encoding="utf-8"))
    for i, case in enumerate(golden["reference"][:8]):
        write("fuzz_tokenize", "golden_%d.txt" % i, case["text"])
    text = open(os.path.join(SHARED, "data/eval_text.txt"), "rb").read(800)
    write("fuzz_tokenize", "eval_text_head.txt", text[:text.rfind(b"\n") + 1])
    write("fuzz_tokenize", "special_inside.txt", "Hello<|endoftext|> wonderful world, it's 2024!")
    write("fuzz_tokenize", "invalid_utf8.txt", b"abc \xff\xfe def \xed\xa0\x80")
    hello = golden["reference"][0]["ids"]
    write("fuzz_tokenize", "hello_world_ids.bin", struct.pack("<%di" % len(hello), *hello))


def press_spec_seeds():
    specs = ["none", "knorm:0.5", "snapkv:ratio=0.5,window=64", "streaming_llm:0.3", "tova:0.3",
             "observed_attention:0.3", "expected_attention:0.3", "random:0.3", "keydiff:0.3", "pyramidkv:0.5",
             "adakv(expected_attention):0.5", "adakv(snapkv:window=32):ratio=0.5,alpha=0.2",
             "chunkkv(knorm):ratio=0.3,chunk=20", "per_layer(knorm):ratios=0.1/0.2/0.3/0.4/0.5/0.6",
             "decoding(knorm:0.5):every=16,target=512", "composed[knorm:0.2,streaming_llm:0.3]",
             " composed[ snapkv:0.5,window=64 , composed[tova,random:0.1] ]:ratio=0.1 "]
    for i, spec in enumerate(specs):
        write("fuzz_press_spec", "spec_%02d.txt" % i, spec)


def eplb_seeds():
    # The worked example of tests/test_eplb.c: 3 groups on 2 nodes, so the global policy.
    example = {"weight": [[50, 5, 30, 10, 20, 5]], "num_replicas": 8, "num_groups": 3, "num_nodes": 2,
               "num_gpus": 4}
    write("fuzz_eplb", "worked_example.json", json.dumps(example))
    one = {"weight": [[8]], "num_replicas": 1, "num_groups": 1, "num_nodes": 1, "num_gpus": 1}
    write("fuzz_eplb", "list.json", json.dumps([one, example], indent=1))
    # DeepSeek's README example: hierarchical, 2 layers of 12 experts.
    deepseek = {"weight": [[90, 132, 40, 61, 104, 165, 39, 4, 73, 56, 183, 86],
                           [20, 107, 104, 64, 19, 197, 187, 157, 172, 86, 16, 27]],
                "num_replicas": 16, "num_groups": 4, "num_nodes": 2, "num_gpus": 8}
    write("fuzz_eplb", "deepseek_hierarchical.json", json.dumps(deepseek))


def duo_pattern_seeds():
    """Gate files shaped like the bundled model's heads (DuoAttention's format:
    one tab-separated row of gates per layer), with the bundled config's
    layer and head counts."""
    config = json.load(open(os.path.join(MODEL, "config.json")))
    layers, heads = config["n_layer"], config["n_head"]
    rows = ["\t".join("%.4f" % (((l * heads + h) * 37 % 101) / 100) for h in range(heads)) for l in range(layers)]
    write("fuzz_duo_pattern", "bundled_shape.tsv", "\n".join(rows) + "\n")
    write("fuzz_duo_pattern", "crlf_spaces.tsv", "0 1e-3\r\n0.5   1\r\n")
    write("fuzz_duo_pattern", "one_head.tsv", "0.25")


def main():
    if not os.path.isdir(MODEL):
        sys.exit("run from the repository root (no %s here)" % MODEL)
    safetensors_seeds()
    config_seeds()
    tokenizer_files_seeds()
    tokenize_seeds()
    press_spec_seeds()
    eplb_seeds()
    duo_pattern_seeds()


if __name__ == "__main__":
    main()
