"""CosyVoice-300M-SFT on CPU. Light on import: torch and the runtime load in `engine.py` only."""
