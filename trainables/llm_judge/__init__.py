"""The LLM-judge MoE family: random expert generation configs over LLMs (local Ray actors or any
OpenAI-compatible endpoint), judges that pick the best answer, rewards and value learning, after
the LionAGI tutorial in ``../shared/specs/llm-judge-moe.md``. See ``family.py``."""
