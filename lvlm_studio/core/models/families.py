"""The built-in model families, registered as a first-party plugin like any other."""

from __future__ import annotations

from lvlm_studio.core.models.gemma3 import Gemma3Adapter
from lvlm_studio.core.models.idefics3 import Idefics3Adapter, SmolVLMAdapter
from lvlm_studio.core.models.internvl import InternVLAdapter
from lvlm_studio.core.models.llava import LlavaAdapter
from lvlm_studio.core.models.llava_next import LlavaNextAdapter
from lvlm_studio.core.models.llava_onevision import LlavaOnevisionAdapter
from lvlm_studio.core.models.mllama import MllamaAdapter
from lvlm_studio.core.models.paligemma import PaliGemmaAdapter
from lvlm_studio.core.models.qwen2_vl import Qwen2VLAdapter
from lvlm_studio.core.models.qwen_vl import Qwen2_5_VLAdapter, Qwen3VLAdapter
from lvlm_studio.core.plugin.hookspecs import hookimpl


@hookimpl
def lvlm_studio_model_adapters() -> list[type]:
    return [LlavaAdapter, LlavaNextAdapter, Qwen2VLAdapter, LlavaOnevisionAdapter, Qwen2_5_VLAdapter, Qwen3VLAdapter,
            Gemma3Adapter, Idefics3Adapter, SmolVLMAdapter, PaliGemmaAdapter, InternVLAdapter, MllamaAdapter]
