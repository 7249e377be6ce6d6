"""The ms-swift template class of ``qwen3_vl_coord`` and its registration (imports ms-swift; imported only by
``register.register``, which ms-swift's plugin import calls).

Public: ``CoordQwen3VLTemplate``, ``register``. Design notes: ``docs/design/swift_ext_template.md``.
"""
from __future__ import annotations

import os
from dataclasses import replace

from swift.template import TEMPLATE_MAPPING, register_template
from swift.template.base import MaxLengthError
from swift.template.templates.qwen import Qwen3VLTemplate
from swift.utils import get_env_args, get_logger

from .. import environment
from ..core import codec
from ..core.vocab import CoordVocab
from .decoding import DecodingConfig, generate_with_grammar
from .lean import lean_forward, lean_requested
from .model import TEMPLATE_TYPE
from ..environment import bad_samples_policy, order_policy_setting, order_seed_setting
from .rows import BINS_TYPE
from .template import REPLACED_ROWS, CoordOrderEpochCallback, EncodeFailure, row_where, load_image_as_seen
from .vllm_decoding import engine_kwargs
from . import slots


class CoordQwen3VLTemplate(Qwen3VLTemplate):
    """ms-swift's Qwen3-VL template with the codec: prompt, object order, boxes rendered as coordinate tokens,
    encode failures reported, the answer grammar at generation (see the module docstring of ``template``)."""

    def init_env_args(self):
        super().init_env_args()
        self.coord_prompt = get_env_args(environment.PROMPT_ENV, str, codec.DEFAULT_PROMPT)
        DecodingConfig.from_env()  # a bad COORD_DECODING* key stops the run here, naming the key
        self.coord_order = order_policy_setting()
        self.coord_order_seed = order_seed_setting()
        self.coord_order_epoch = 0

    def init_processor(self, processor) -> None:
        super().init_processor(processor)
        if processor is not None:
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
        # The order is applied in normalize_bbox, where every box is normalised (pixel boxes need the
        # image size, known only after the images are loaded).

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
        if inputs.images:
            inputs.images = [load_image_as_seen(img) for img in inputs.images]
        if inputs.objects:
            self._order_objects(inputs)
        self._add_prompt(inputs)
        super()._preprocess_inputs(inputs)

    # -- encode failures ------------------------------------------------------------------------
    def encode(self, inputs, return_template_inputs: bool = False, return_length: bool = False):
        try:
            encoded = super().encode(inputs, return_template_inputs=return_template_inputs,
                                     return_length=return_length)
            if not self.is_training and isinstance(encoded, dict) and slots.slots_path() is not None:
                encoded[slots.KEY_FIELD] = slots.request_key(inputs)  # joins the slots to the row
            return encoded
        except Exception as e:
            if not self.is_training:
                raise
            where = row_where(inputs)
            reason = "max_length" if isinstance(e, MaxLengthError) else "encode_error"
            if reason == "encode_error" and bad_samples_policy() == "error":
                raise EncodeFailure(
                    f"[swift-coord] cannot encode the training row of {where}: {e.__class__.__name__}: {e}. "
                    "ms-swift would train on a random other row instead; the run stops. Fix or remove the "
                    "row, or set COORD_BAD_SAMPLES=drop to let ms-swift replace it (each one is "
                    "reported).") from e
            REPLACED_ROWS[reason] = REPLACED_ROWS.get(reason, 0) + 1
            msg = (f"[swift-coord] row of {where} not encoded ({reason}: {e.__class__.__name__}: {e}); "
                   f"ms-swift replaces it with a random other row. Replaced in this process so far: "
                   f"{REPLACED_ROWS}")
            get_logger().warning(msg)
            print(msg, flush=True)
            raise

    # -- inference ------------------------------------------------------------------------------
    def data_collator(self, batch, *, padding_to=None):
        keys = None
        if batch and isinstance(batch[0], dict) and slots.KEY_FIELD in batch[0]:
            keys = [b.pop(slots.KEY_FIELD, None) for b in batch]
        out = super().data_collator(batch, padding_to=padding_to)
        self.coord_row_keys = keys  # read (and cleared) by generate_with_grammar for this batch
        return out

    def generate(self, model, *args, **kwargs):
        # COORD_DECODING=constrained|coordexp: the answer grammar as a logits processor (decoding.py).
        return generate_with_grammar(self, super().generate, model, *args, **kwargs)

    def _apply_order(self, inputs, norm_boxes) -> None:
        """Order ``objects`` by the policy: ``norm_boxes`` (normalised, for the key) or None (``coord_bins``
        rows, ordered by the preprocessor already); then the ``random`` policy's draw."""
        objects = inputs.objects
        refs, bins = objects["ref"], objects["bbox"]
        if norm_boxes is not None:
            order = codec.order_indices(norm_boxes, self.coord_order)
            refs, bins = [refs[i] for i in order], [bins[i] for i in order]
        if self.coord_order.redraw and len(bins) > 1:
            name = os.path.basename(str(getattr(inputs, "coord_where", "") or ""))
            key = f"{name}|{refs}|{bins}"
            perm = codec.draw_order(len(bins), key, self.coord_order_epoch, self.coord_order_seed)
            refs, bins = [refs[i] for i in perm], [bins[i] for i in perm]
        objects["ref"], objects["bbox"] = list(refs), [list(b) for b in bins]

    def _watch_epochs(self, trainer) -> None:
        """Under the ``random`` order: add the epoch callback to the trainer once."""
        if not self.coord_order.redraw or trainer is None or getattr(self, "_coord_epochs_watched", False):
            return
        args = getattr(trainer, "args", None)
        if getattr(args, "dataloader_persistent_workers", False) and getattr(args, "dataloader_num_workers", 0):
            raise ValueError(f"{codec.ORDER_ENV}=random re-draws the order per epoch, which persistent data "
                             "loader workers never hear of: use --dataloader_persistent_workers false")
        trainer.add_callback(CoordOrderEpochCallback(self))
        self._coord_epochs_watched = True

    # -- training forward ---------------------------------------------------------------------
    def compute_sft_loss(self, model, inputs, num_items_in_batch=None, trainer=None):
        # COORDEXP_LEAN=1: the forward stops before the LM head; the loss works from the hidden states.
        self._watch_epochs(trainer)

        if lean_requested(trainer):
            return lean_forward(model, inputs)
        return super().compute_sft_loss(model, inputs, num_items_in_batch=num_items_in_batch, trainer=trainer)

    # -- vLLM decoding (``swift infer --infer_backend vllm``) ------------------------------------
    def prepare_engine_kwargs(self):
        # ms-swift's VllmEngine merges these into vLLM's EngineArgs: the answer grammar as a logits
        # processor and processed log-probabilities under COORD_DECODING=constrained|coordexp.
        return {**super().prepare_engine_kwargs(), **engine_kwargs()}

    # -- objects -----------------------------------------------------------------------------
    def normalize_bbox(self, inputs) -> None:
        """Boxes become codec bins here; ``replace_bbox`` renders them."""
        objects = inputs.objects
        bbox_type = objects.pop("bbox_type", None) or "real"
        objects.pop("image_id", None)
        if bbox_type == BINS_TYPE:
            # (the preprocessor wrote codec.target_bins already; widening again changes nothing)
            objects["bbox"] = [list(codec.widen_bins([int(k) for k in box])) for box in objects["bbox"]]
            self._apply_order(inputs, None)
            return
        norm_boxes = []
        for i, box in enumerate(objects["bbox"]):
            if bbox_type != "norm1":
                box = codec.normalize_box(box, objects["width"][0], objects["height"][0], clip=True)
            problem = codec.bbox_problem(list(box))
            if problem:
                raise ValueError(f"{self._where(inputs)}: {problem}")
            norm_boxes.append(tuple(float(v) for v in box))
            objects["bbox"][i] = list(codec.target_bins(box))
        self._apply_order(inputs, norm_boxes)

    def replace_ref(self, ref, index, inputs):
        return []  # the whole object is rendered at its <bbox>

    def replace_bbox(self, bbox, index, inputs):
        refs = inputs.objects.get("ref") or []
        if index >= len(refs):
            raise ValueError(f"{self._where(inputs)}: <bbox> #{index} has no description")
        return [codec.render_object(codec.clean_desc(refs[index]), bbox)]


def register() -> None:
    """Register the template ``qwen3_vl_coord``: ms-swift's ``qwen3_vl`` entry with ``CoordQwen3VLTemplate``
    (a no-op when registered already)."""
    if TEMPLATE_TYPE in TEMPLATE_MAPPING:
        return
    stock = TEMPLATE_MAPPING["qwen3_vl"]
    register_template(replace(stock, template_type=TEMPLATE_TYPE, template_cls=CoordQwen3VLTemplate), exist_ok=True)
