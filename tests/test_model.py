"""The model type ``qwen3_vl_coord`` (``swift_ext/model.py``): tied/untied decision, row initialisation under
DeepSpeed ZeRO-3 partitioning, dense/MoE dispatch."""
import subprocess
import sys

import pytest
import torch
from torch import nn

from swift_coord_plugin.swift_ext import model as coord_model


class _TinyLM(nn.Module):
    """Embedding + bias-free head, tied (one parameter) or not; vocabulary 300, hidden 8."""

    def __init__(self, tied: bool, vocab: int = 300, hidden: int = 8):
        super().__init__()
        self.emb = nn.Embedding(vocab, hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def get_input_embeddings(self):
        return self.emb

    def get_output_embeddings(self):
        return self.head


def test_tied_is_parameter_identity_not_storage_address():
    assert coord_model.head_is_tied(_TinyLM(tied=True))
    untied = _TinyLM(tied=False)
    assert not coord_model.head_is_tied(untied)
    # What ZeRO-3 leaves of a partitioned parameter: an empty tensor, data_ptr() 0. Two separate ones share
    # that address (the old decision called them tied) but are still two parameters.
    untied.emb.weight.data = torch.empty(0)
    untied.head.weight.data = torch.empty(0)
    assert untied.emb.weight.data_ptr() == untied.head.weight.data_ptr() == 0
    assert not coord_model.head_is_tied(untied)


@pytest.mark.parametrize("tied", [True, False])
def test_init_new_rows_plain(tied):
    torch.manual_seed(0)
    m = _TinyLM(tied)
    before = m.head.weight.detach().clone()
    digest = coord_model.init_new_rows(m, 200, 300, seed=3, noise=0.01)
    emb, head = m.emb.weight.detach(), m.head.weight.detach()
    assert torch.equal(emb[:200], before[:200] if tied else emb[:200])
    ref = emb[:200]
    assert torch.allclose(emb[200:].mean(0), ref.mean(0), atol=0.01 * ref.std(0).max().item())
    if not tied:  # the head's new rows follow the head's own statistics
        assert torch.equal(head[:200], before[:200])
        assert (head[200:] - before[:200].mean(0)).abs().max() < 0.1 * before[:200].std(0).max()
    assert digest == coord_model.rows_digest([emb] if tied else [emb, head], 200, 300)


_ZERO_INIT = r"""
import json, os, socket, sys
import torch
sys.path.insert(0, sys.argv[1])
from test_model import _TinyLM
from swift_coord_plugin.swift_ext.model import init_new_rows

with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
import deepspeed
deepspeed.init_distributed(dist_backend="gloo")
from transformers.integrations import HfDeepSpeedConfig
ds_config = {"zero_optimization": {"stage": 3}, "train_batch_size": 1}
hf_ds = HfDeepSpeedConfig(ds_config)  # as under `swift sft --deepspeed zero3`: is_deepspeed_zero3_enabled() is True
out = {}
for tied in (True, False):
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        part = _TinyLM(tied)
    emb, head = part.emb.weight, part.head.weight
    assert emb.numel() == 0 and emb.data_ptr() == 0 and head.data_ptr() == 0  # partitioned
    plain = _TinyLM(tied)
    with deepspeed.zero.GatheredParameters([emb, head]):
        plain.emb.weight.data.copy_(emb.data)
        if not tied:
            plain.head.weight.data.copy_(head.data)
    d_part = init_new_rows(part, 200, 300, seed=5)
    d_plain = init_new_rows(plain, 200, 300, seed=5)
    with deepspeed.zero.GatheredParameters([emb, head]):
        same = torch.equal(emb.data, plain.emb.weight.data) and torch.equal(head.data, plain.head.weight.data)
    out["tied" if tied else "untied"] = dict(same=same, digests=[d_part, d_plain])
print("RESULT " + json.dumps(out))
"""


def test_init_new_rows_on_zero3_partitioned_parameters(tmp_path):
    """Under ``deepspeed.zero.Init`` every parameter is an empty tensor with ``data_ptr() == 0``; the old
    address comparison called an untied head tied and left its new rows as the resize had put them. Both
    matrices must come out bit-identical to a plain (unpartitioned) model initialised with the same seed."""
    import json
    from pathlib import Path

    proc = subprocess.run([sys.executable, "-c", _ZERO_INIT, str(Path(__file__).parent)], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    for case in ("tied", "untied"):
        assert res[case]["same"], res
        assert res[case]["digests"][0] == res[case]["digests"][1], res


def test_is_moe_checkpoint():
    assert coord_model.is_moe_checkpoint({"model_type": "qwen3_vl_moe", "architectures": None})
    assert coord_model.is_moe_checkpoint({"model_type": "x", "architectures": ["Qwen3VLMoeForConditionalGeneration"]})
    assert not coord_model.is_moe_checkpoint({"model_type": "qwen3_vl",
                                              "architectures": ["Qwen3VLForConditionalGeneration"]})


@pytest.mark.parametrize("which, cls", [("tiny_model_dir", "Qwen3VLForConditionalGeneration"),
                                        ("tiny_model_moe_dir", "Qwen3VLMoeForConditionalGeneration")])
def test_model_type_builds_the_checkpoints_own_class(request, which, cls):
    """``--model_type qwen3_vl_coord`` on a dense and on a MoE checkpoint: each with its own class (the MoE one
    with ms-swift's MoE loader steps), the same 1002 tokens, the same row initialisation."""
    from swift.model import get_model_processor
    from swift_coord_plugin.swift_ext.register import register

    register()
    model, processor = get_model_processor(request.getfixturevalue(which), model_type="qwen3_vl_coord",
                                           torch_dtype=torch.float32, download_model=False)
    assert type(model).__name__ == cls
    moe = cls == "Qwen3VLMoeForConditionalGeneration"
    assert model.model_info.is_moe_model == moe
    assert len(processor.tokenizer) == 151669 + 1002
    emb = model.get_input_embeddings().weight.detach()
    assert emb.shape[0] == 152704
    assert (emb[151669:] - emb[:151669].mean(0)).abs().max() < 0.1 * emb[:151669].std(0).max()
    if moe:
        from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeTextExperts

        assert getattr(Qwen3VLMoeTextExperts, "_patch", False)  # ms-swift's expert dtype patch applied
        assert model.get_output_embeddings().weight is not model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight.detach()
        assert (head[151669:] - head[:151669].mean(0)).abs().max() < 0.1 * head[:151669].std(0).max()


def test_keep_router_logits_restores_what_the_rebuilt_output_drops():
    """ms-swift's DeepSpeed forward rebuilds the MoE output without ``router_logits`` (shape of that wrapper:
    ``origin_forward`` kept, a new ``forward`` that calls ``language_model`` and builds a fresh output)."""
    from transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe import Qwen3VLMoeModelOutputWithPast

    class LM(nn.Module):
        def forward(self, x):
            return Qwen3VLMoeModelOutputWithPast(last_hidden_state=x, router_logits=(x.sum(-1),))

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.language_model = LM()

        def forward(self, x):
            out = self.language_model(x)
            return Qwen3VLMoeModelOutputWithPast(last_hidden_state=out.last_hidden_state)  # router_logits lost

    inner = Inner()
    x = torch.ones(1, 3, 4)
    assert inner(x).router_logits is None
    coord_model.keep_router_logits(inner)  # not ms-swift's wrapper (no origin_forward): left alone
    assert inner(x).router_logits is None
    inner.origin_forward = inner.forward
    coord_model.keep_router_logits(inner)
    coord_model.keep_router_logits(inner)  # idempotent
    out = inner(x)
    assert torch.equal(out.router_logits[0], x.sum(-1)) and torch.equal(out["router_logits"][0], x.sum(-1))
