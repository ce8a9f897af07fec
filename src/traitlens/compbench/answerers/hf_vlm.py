"""A local Hugging Face ``transformers`` vision-language model, greedy decoding.

``transformers`` is optional (``pip install 'traitlens[vlm]'``) and imported only when an ``hf:``
answerer is made. The model gets both images in one user turn, or one merged image (``merged=True``)
for models that take a single image.
"""

from __future__ import annotations

from traitlens.compbench.answerers.base import Query
from traitlens.errors import UserError


def _transformers():
    try:
        import transformers
    except ImportError as exc:
        raise UserError("hf: models need the optional package transformers; install it with "
                        "pip install 'traitlens[vlm]'") from exc
    return transformers


class HFVisionAnswerer:
    """Answer with a local image-text-to-text model (a folder or a cached hub name)."""

    concurrency = 1  # one model, one forward at a time

    def __init__(self, path: str, device: str = "cpu", merged: bool = False, max_new_tokens: int = 128):
        import torch

        tf = _transformers()
        self.path = str(path)
        self.name = f"hf:{self.path}"
        self.merged = merged
        self.max_new_tokens = int(max_new_tokens)
        self.device = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
        model_cls = getattr(tf, "AutoModelForImageTextToText", None) or getattr(tf, "AutoModelForVision2Seq")
        try:
            self.processor = tf.AutoProcessor.from_pretrained(self.path)
            self.model = model_cls.from_pretrained(self.path).to(self.device).eval()
        except OSError as exc:
            raise UserError(f"cannot load the model {self.path!r} ({exc}); pass a local model folder "
                            f"or a name already in the Hugging Face cache") from exc

    def answer(self, query: Query) -> str:
        import torch

        images = query.load_images(merged=self.merged)
        content = [{"type": "image"} for _ in images] + [{"type": "text", "text": query.prompt}]
        text = self.processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
        inputs = self.processor(text=[text], images=images, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, do_sample=False, max_new_tokens=self.max_new_tokens)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]  # the reply only, not the prompt
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)[0].strip()
