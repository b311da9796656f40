"""What the Python tests share: the model, a needle context, and the `pikv`
command the package itself would run (the one beside the loaded library), so
that the tests compare against the CLI of the same install."""
import json
import os
import subprocess
import tempfile

import pikv
from pikv import _lib, _locate

NEEDLE = " The pass key is 52817. Remember it. 52817 is the pass key. "
QUESTION = " What is the pass key? The pass key is"
_model = None


def model():
    """One bundled model for the whole run (1 thread, as the CLI calls below)."""
    global _model
    if _model is None:
        _model = pikv.Model(threads=1)
    return _model


def needle_context():
    """About 800 tokens of the bundled haystack text with a pass key in the middle."""
    with open(os.path.join(pikv.data_dir(), "data", "haystack.txt"), encoding="utf-8") as f:
        text = f.read()
    return text[:1800] + NEEDLE + text[1800:3600]


def cli():
    return _locate.executable(_lib.lib())


def cli_json(*args):
    """Run `pikv ARGS --weights f32 --kv-type f32 --json --threads 1` (float32
    weights and cache, as the package loads and keeps them); its JSON object."""
    done = subprocess.run([cli()] + list(args) + ["--weights", "f32", "--kv-type", "f32", "--json", "--threads", "1"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, check=False)
    if done.returncode != 0:
        raise AssertionError("pikv %s failed: %s" % (" ".join(args), done.stderr.decode()))
    return json.loads(done.stdout.decode("utf-8", "replace"))


def context_file(text):
    """text in a temporary file (removed when the process exits)."""
    f = tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8")
    f.write(text)
    f.close()
    import atexit
    atexit.register(os.unlink, f.name)
    return f.name
