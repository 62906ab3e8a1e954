"""Export trained adapters into formats other runtimes load (GGUF LoRA for llama.cpp)."""
