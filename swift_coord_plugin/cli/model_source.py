"""Where the model weights come from, checked before a long job starts (``shell/train.sh``, ``shell/ablation.sh``).

    python -m swift_coord_plugin.cli.model_source MODEL [--use-hf]

ms-swift 4.6 takes ``--model`` as a local folder, or a hub id that it downloads from ModelScope (the default) or
from Hugging Face (``--use_hf true`` or ``USE_HF=1``). A compute node without network is declared offline with
``HF_HUB_OFFLINE=1``; there a hub id only works when its files are already in that hub's cache (ModelScope:
``MODELSCOPE_CACHE``, Hugging Face: ``HF_HOME``/``HF_HUB_CACHE``). Exit 0 and print where the weights are
(the folder, the cached snapshot, or ``online: <hub>``); exit 2 naming the folder, the variable and the cache
that were looked at when an offline node cannot have them. See docs/cluster.md.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional, Tuple

from .. import environment
from ..core.flags import is_true

OFFLINE_VAR = "HF_HUB_OFFLINE"
def looks_like_path(model: str) -> bool:
    """A value meant as a folder rather than a hub id (``owner/name``): absolute, ``./``, ``~`` or more than
    one slash."""
    return model.startswith(("/", ".", "~")) or model.count("/") != 1


def locate(model: str, use_hf: bool, environ=None, what: str = "MODEL") -> Tuple[bool, str]:
    """(usable, where or why not) for ``--model MODEL``: a folder with ``config.json``; else a hub id, which
    offline must already be in the cache of the hub ms-swift will use. ``what`` names where the value came
    from in the message (the variable, or the configuration)."""
    environ = environment.current(environ)
    hub = "Hugging Face" if use_hf else "ModelScope"
    if os.path.isdir(model):
        if os.path.isfile(os.path.join(model, "config.json")):
            return True, os.path.abspath(model)
        return False, f"{what}={model} is a folder without config.json (not a model folder)"
    if looks_like_path(model):
        return False, f"{what}={model}: no such folder"
    if not is_true(environ.get(OFFLINE_VAR)):
        return True, f"online: {hub} downloads {model}"
    try:
        if use_hf:
            from huggingface_hub import snapshot_download

            return True, snapshot_download(model, local_files_only=True)
        from modelscope import snapshot_download as ms_snapshot_download

        return True, ms_snapshot_download(model, local_files_only=True)
    except Exception as e:  # the hubs raise their own not-in-cache errors
        cache = (environ.get("HF_HUB_CACHE") or os.path.join(environ.get("HF_HOME", "~/.cache/huggingface"), "hub")
                 if use_hf else environ.get("MODELSCOPE_CACHE", "~/.cache/modelscope/hub"))
        return False, (f"{what}={model} is a hub id, {OFFLINE_VAR}={environ.get(OFFLINE_VAR)} says this node is "
                       f"offline, and {hub}'s cache ({cache}) does not hold it ({type(e).__name__}). Set MODEL to "
                       f"a local folder with the weights, or download it on a node with network first "
                       f"(docs/cluster.md)")


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m swift_coord_plugin.cli.model_source", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("--use-hf", action="store_true", help="the weights come from Hugging Face (also: USE_HF=1)")
    p.add_argument("--what", default="MODEL", help="where the value came from, for the message")
    a = p.parse_args(argv)
    ok, where = locate(a.model, a.use_hf or is_true(environment.current().get("USE_HF")), what=a.what)
    print(where if ok else f"error: {where}", file=sys.stdout if ok else sys.stderr)
    code = 0 if ok else 2
    if "modelscope" in sys.modules:
        # Offline, one of the ModelScope client's exit handlers waits on the network for minutes (measured:
        # 1-3 min after an answer in 0.4 s): nothing is left to write, so leave without them.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    sys.exit(main())
