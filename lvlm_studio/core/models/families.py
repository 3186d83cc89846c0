"""The built-in model families, registered as a first-party plugin like any other."""

from __future__ import annotations

from lvlm_studio.core.hookspecs import hookimpl
from lvlm_studio.core.models.llava import LlavaAdapter
from lvlm_studio.core.models.llava_next import LlavaNextAdapter
from lvlm_studio.core.models.qwen2_vl import Qwen2VLAdapter


@hookimpl
def lvlm_studio_model_adapters() -> list[type]:
    return [LlavaAdapter, LlavaNextAdapter, Qwen2VLAdapter]
