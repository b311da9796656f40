"""Write a GPT-2 checkpoint of random weights (Hugging Face format, bf16) of a real
model's shape, for benchmarking the CUDA engine where nothing can be downloaded.

usage: python3 random_gpt2.py OUT_DIR gpt2|gpt2-medium
"""
import sys

import torch
from transformers import GPT2Config, GPT2LMHeadModel

SHAPES = {"gpt2": {}, "gpt2-medium": {"n_embd": 1024, "n_layer": 24, "n_head": 16}}

torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(**SHAPES[sys.argv[2]])).to(torch.bfloat16)
model.save_pretrained(sys.argv[1])
