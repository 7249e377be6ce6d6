"""Template ``qwen3_vl_coord``: ms-swift's Qwen3-VL template rendering objects with the codec.

A row (as the plugin's dataset preprocessor writes it, or any ms-swift grounding row) carries::

    messages: [{"role": "user", "content": "<image>"},
               {"role": "assistant", "content": "<ref-object><bbox>" * n}]
    images:   [path]
    objects:  {"ref": [desc, ...], "bbox": [[x1, y1, x2, y2], ...], "bbox_type": "coord_bins" | "norm1" | "real"}

``coord_bins`` boxes are codec bins, already ordered: the plugin's preprocessor quantises and orders the
full-precision values it reads, because ms-swift stores ``objects`` as a JSON column that rounds floats
to 10 decimals, enough to move a value that sits on a bin's rounding boundary into the next bin.
``norm1`` ([0, 1]) and ``real`` (pixels) boxes, as in any ms-swift grounding dataset, are ordered and
quantised here.

The template
* appends the fixed prompt to a user turn that holds nothing but image tags (a user turn with its own
  text keeps it). The prompt is ``codec.DEFAULT_PROMPT`` unless the environment key ``COORD_PROMPT``
  (``--model_kwargs '{"COORD_PROMPT": "..."}'`` or a YAML ``ENV:`` block) says otherwise;
* validates the objects (a bad box or an empty description is an error naming the image) and, unless
  they are ``coord_bins``, orders them with the codec (``y1`` then ``x1``, stable);
* renders each ``<ref-object><bbox>`` pair as ``codec.render_object``: every coordinate is one token;
* at inference on the transformers backend, decodes under ``COORD_DECODING`` (``free | constrained |
  coordexp``, see ``decoding.py``) by wrapping ``generate`` with the answer grammar's logits processor;
* under ``swift infer --infer_backend vllm``, installs the answer grammar of ``COORD_DECODING`` in the
  vLLM engine (``prepare_engine_kwargs``, see ``vllm_decoding.py``);
* with the lean loss path (``COORDEXP_LEAN=1``), runs the training forward without the LM head
  (``compute_sft_loss``, see ``lean.py``).
Everything else (image handling, masking of prompt and image tokens in the labels) is the stock
Qwen3-VL template's.
"""
from __future__ import annotations

from ..core import codec
from .model import TEMPLATE_TYPE

# bbox_type of rows whose boxes the dataset preprocessor already quantised (see dataset.py).
BINS_TYPE = "coord_bins"

_TEMPLATE_CLS = None


def _template_cls():
    global _TEMPLATE_CLS
    if _TEMPLATE_CLS is not None:
        return _TEMPLATE_CLS
    from swift.template.templates.qwen import Qwen3VLTemplate
    from swift.utils import get_env_args

    class CoordQwen3VLTemplate(Qwen3VLTemplate):

        def init_env_args(self):
            super().init_env_args()
            self.coord_prompt = get_env_args("COORD_PROMPT", str, codec.DEFAULT_PROMPT)
            from .decoding import DecodingConfig

            DecodingConfig.from_env()  # a bad COORD_DECODING* key stops the run here, naming the key

        def init_processor(self, processor) -> None:
            super().init_processor(processor)
            if processor is not None:
                from ..core.vocab import CoordVocab

                self.coord_vocab = CoordVocab.from_tokenizer(self.tokenizer)

        # -- inputs ------------------------------------------------------------------------------
        def _where(self, inputs) -> str:
            where = getattr(inputs, "coord_where", None)
            if where:
                return where
            imgs = inputs.images or []
            if imgs:
                img = imgs[0]
                if isinstance(img, dict):
                    img = img.get("path")
                if isinstance(img, str):
                    return img
            return "the sample"

        def _order_objects(self, inputs) -> None:
            objects = inputs.objects
            refs, bboxes = objects.get("ref") or [], objects.get("bbox") or []
            if not bboxes:
                return
            if len(refs) != len(bboxes):
                raise ValueError(f"{self._where(inputs)}: objects has {len(refs)} refs but {len(bboxes)} boxes")
            bbox_type = objects.get("bbox_type")
            for ref, box in zip(refs, bboxes):
                if bbox_type == BINS_TYPE:
                    problem = codec.desc_problem(ref) or codec.bins_problem(box)
                else:
                    problem = codec.desc_problem(ref) or (codec.bbox_problem(box) if bbox_type == "norm1" else None)
                if problem:
                    raise ValueError(f"{self._where(inputs)}: {problem}")
            if bbox_type == BINS_TYPE:
                return  # ordered by the preprocessor on the unquantised values
            order = sorted(range(len(bboxes)), key=lambda i: codec.order_key(bboxes[i]))
            objects["ref"] = [refs[i] for i in order]
            objects["bbox"] = [list(bboxes[i]) for i in order]

        def _add_prompt(self, inputs) -> None:
            for message in inputs.messages:
                if message["role"] != "user" or not isinstance(message["content"], str):
                    continue
                content = message["content"]
                if content.replace("<image>", "").strip() == "":
                    message["content"] = content + self.coord_prompt
                break

        def _preprocess_inputs(self, inputs) -> None:
            inputs.coord_where = self._where(inputs)
            if inputs.objects:
                self._order_objects(inputs)
            self._add_prompt(inputs)
            super()._preprocess_inputs(inputs)

        # -- inference ------------------------------------------------------------------------------
        def generate(self, model, *args, **kwargs):
            # COORD_DECODING=constrained|coordexp: the answer grammar as a logits processor (decoding.py).
            from .decoding import generate_with_grammar

            return generate_with_grammar(self, super().generate, model, *args, **kwargs)

        # -- training forward ---------------------------------------------------------------------
        def compute_sft_loss(self, model, inputs, num_items_in_batch=None, trainer=None):
            # COORDEXP_LEAN=1: the forward stops before the LM head; the loss works from the hidden states.
            from .lean import lean_forward, lean_requested

            if lean_requested(trainer):
                return lean_forward(model, inputs)
            return super().compute_sft_loss(model, inputs, num_items_in_batch=num_items_in_batch, trainer=trainer)

        # -- vLLM decoding (``swift infer --infer_backend vllm``) ------------------------------------
        def prepare_engine_kwargs(self):
            # ms-swift's VllmEngine merges these into vLLM's EngineArgs: the answer grammar as a logits
            # processor and processed log-probabilities under COORD_DECODING=constrained|coordexp.
            from .vllm_decoding import engine_kwargs

            return {**super().prepare_engine_kwargs(), **engine_kwargs()}

        # -- objects -----------------------------------------------------------------------------
        def normalize_bbox(self, inputs) -> None:
            """Boxes become codec bins here; ``replace_bbox`` renders them."""
            objects = inputs.objects
            bbox_type = objects.pop("bbox_type", None) or "real"
            objects.pop("image_id", None)
            if bbox_type == BINS_TYPE:
                objects["bbox"] = [[int(k) for k in box] for box in objects["bbox"]]
                return
            for i, box in enumerate(objects["bbox"]):
                if bbox_type != "norm1":
                    box = codec.normalize_box(box, objects["width"][0], objects["height"][0], clip=True)
                problem = codec.bbox_problem(list(box))
                if problem:
                    raise ValueError(f"{self._where(inputs)}: {problem}")
                objects["bbox"][i] = list(codec.quantize_box(box))

        def replace_ref(self, ref, index, inputs):
            return []  # the whole object is rendered at its <bbox>

        def replace_bbox(self, bbox, index, inputs):
            refs = inputs.objects.get("ref") or []
            if index >= len(refs):
                raise ValueError(f"{self._where(inputs)}: <bbox> #{index} has no description")
            return [codec.render_object(codec.clean_desc(refs[index]), bbox)]

    _TEMPLATE_CLS = CoordQwen3VLTemplate
    return _TEMPLATE_CLS


def register() -> None:
    from dataclasses import replace

    from swift.template import TEMPLATE_MAPPING, register_template

    if TEMPLATE_TYPE in TEMPLATE_MAPPING:
        return
    stock = TEMPLATE_MAPPING["qwen3_vl"]
    register_template(replace(stock, template_type=TEMPLATE_TYPE, template_cls=_template_cls()), exist_ok=True)
