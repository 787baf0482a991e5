"""The adapted models: a frozen backbone, what a federation trains on it, and a linear head.

One module per family (a soft prompt on text, a visual prompt on images, LoRA adapters,
full fine-tuning), each registering its builders with :mod:`.registry` on import; the
toolbox (devices, autocast, head init), backbone loading and the state API they share
live apart from every model. Importing this package imports every family module, so the
registry is complete.
"""

from fedprompt_client_agent.models import full_finetune, lora, text_prompt, visual_prompt

__all__ = ["full_finetune", "lora", "text_prompt", "visual_prompt"]
