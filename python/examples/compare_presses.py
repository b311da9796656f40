"""Compress one needle-in-a-haystack context with several presses and print,
for each, the KV cache it kept, the answer and whether it retrieved the key.

    PYTHONPATH=python python3 python/examples/compare_presses.py     # from the source tree
    python3 compare_presses.py                                       # after pip install ./python
"""
import os

import pikv

KEY = "52817"
QUESTION = " What is the pass key? The pass key is"


def needle_context():
    """About 800 tokens of the bundled text with the pass key in the middle."""
    with open(os.path.join(pikv.data_dir(), "data", "haystack.txt"), encoding="utf-8") as f:
        text = f.read()
    return text[:1800] + " The pass key is %s. Remember it. %s is the pass key. " % (KEY, KEY) + text[1800:3600]


def main():
    presses = [
        None,
        pikv.SnapKVPress(compression_ratio=0.5),
        pikv.KnormPress(compression_ratio=0.5),
        pikv.StreamingLLMPress(compression_ratio=0.5),
        pikv.AdaKVPress(pikv.ExpectedAttentionPress(compression_ratio=0.5)),
        pikv.DuoAttentionPress(head_compression_ratio=0.5),
        pikv.DuoAttentionPress(head_compression_ratio=0.75),
        pikv.MoERouterPress(compression_ratio=0.5, router="eplb"),
        pikv.EPLBDuoPress(compression_ratio=0.5),
    ]
    context = needle_context()
    with pikv.Model() as model:
        print("%-36s %8s %10s  %-9s %s" % ("press", "KV kept", "KV MiB", "retrieval", "answer"))
        for press in presses:
            r = model.answer(context, QUESTION, press, max_new_tokens=8)
            text = r.answers[0].replace("<|endoftext|>", "").strip()
            answer = text.splitlines()[0] if text else ""
            print("%-36s %7.1f%% %10.2f  %-9s %r" % (r.press, 100 * r.kv_kept, r.kv_bytes_after / 2**20,
                                                    "found" if KEY in r.answers[0] else "missed", answer))


if __name__ == "__main__":
    main()
