"""Demo and benchmark tools: the bundled silos (drug reviews, digits) and GGUF conversion.

The console scripts ``fedprompt-make-silos`` (:mod:`.make_silos`) and
``fedprompt-convert-gguf`` (:mod:`.gguf_convert`) live here; the agent never imports them.
"""
